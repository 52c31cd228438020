"""Regexes that run in time linear in the text, whatever the pattern: RE2.

Signature regexes come partly from operators (`/etc/nodewarden/signatures.d`), and the
lines they run on come from anyone who can make a service log something. Python's `re`
backtracks: a pattern with nested or adjacent quantifiers can take minutes on a crafted
40-character line. RE2 (google-re2) builds an automaton instead, so no pattern and no
line can hang `check`, `scan` or the daemon; patterns RE2 cannot run (backreferences,
lookarounds) are refused by the catalog anyway.

The binding's `re`-like module wraps each call in Python that costs ~10 µs; the matcher
runs on every candidate line, so this calls the compiled object (`re2._re2.RE2.Match`)
directly: ~1.5 µs per call. Texts are encoded to UTF-8 once per line by the caller
(`encode`) and reused for every candidate signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import re2
from re2 import _re2

_START = re2._Anchor.ANCHOR_START
_BOTH = re2._Anchor.ANCHOR_BOTH
_NONE = (-1, -1)
#: what RE2 may use per compiled pattern (its default is 8 MiB; ours are small)
MAX_MEM = 4 << 20
_EMPTY: Mapping[str, str] = MappingProxyType({})


def encode(text: str) -> bytes:
    """The bytes a LinearRegex runs on (invalid surrogates become '?')."""
    return text.encode("utf-8", "replace")


class LinearRegex:
    """One compiled pattern; ValueError with RE2's reason when it cannot be compiled."""

    __slots__ = ("_groups", "_re", "group_names", "pattern")

    def __init__(self, pattern: str) -> None:
        options = re2.Options()
        options.max_mem = MAX_MEM
        options.log_errors = False
        compiled = _re2.RE2(pattern.encode("utf-8"), options)
        if not compiled.ok():
            raise ValueError(f"RE2 cannot compile it: {compiled.error()}")
        self.pattern = pattern
        self._re = compiled
        self._groups = tuple((name.decode("utf-8"), index)
                             for name, index in compiled.NamedCapturingGroups())
        self.group_names = frozenset(name for name, _ in self._groups)

    def match(self, data: bytes) -> Mapping[str, str] | None:
        """Named groups of a match at the start of `data` (None: no match): the caller's
        to keep (a new dict, or a read-only empty mapping)."""
        spans = self._re.Match(_START, data, 0, len(data))
        if spans[0] == _NONE:
            return None
        if not self._groups:
            return _EMPTY
        out: dict[str, str] = {}
        for name, index in self._groups:
            start, end = spans[index]
            if start >= 0:
                out[name] = data[start:end].decode("utf-8", "replace")
        return out

    def fullmatch(self, data: bytes) -> bool:
        return bool(self._re.Match(_BOTH, data, 0, len(data))[0] != _NONE)

    def __repr__(self) -> str:
        return f"LinearRegex({self.pattern!r})"
