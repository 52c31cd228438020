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

RE2 itself is loaded on the first compile (`_engine`), not on import: a daemon whose
patterns come from the catalog cache compiles them lazily, so on a host with nothing to
confirm RE2's libraries (~1.9 MiB of the process, docs/architecture.md) never load.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from re2 import _re2

_NONE = (-1, -1)
#: what RE2 may use per compiled pattern (its default is 8 MiB; ours are small)
MAX_MEM = 4 << 20
_EMPTY: Mapping[str, str] = MappingProxyType({})


@functools.cache
def _engine() -> ModuleType:
    """The RE2 binding, imported once, on first need."""
    import re2

    engine: ModuleType = re2
    return engine


def encode(text: str) -> bytes:
    """The bytes a LinearRegex runs on (invalid surrogates become '?')."""
    return text.encode("utf-8", "replace")


class LinearRegex:
    """One compiled pattern; ValueError with RE2's reason when it cannot be compiled.

    `lazy=` the pattern's group names (a pattern already known to compile: the catalog
    cache keeps only catalogs read without error, keyed by the RE2 build) compiles it on
    first use: the daemon carries RE2 programs only for the signatures its lines ever
    reach (each ~25 KiB, and more once matched)."""

    __slots__ = ("_both", "_group_names", "_groups", "_re", "_start", "pattern")

    def __init__(self, pattern: str, *, lazy: frozenset[str] | None = None) -> None:
        self.pattern = pattern
        self._re: _re2.RE2 | None = None
        self._start: _re2.Anchor | None = None
        self._both: _re2.Anchor | None = None
        self._groups: tuple[tuple[str, int], ...] = ()
        self._group_names: frozenset[str] = lazy or frozenset()
        if lazy is None:
            self._compile()

    def _compile(self) -> _re2.RE2:
        re2 = _engine()
        options = re2.Options()
        options.max_mem = MAX_MEM
        options.log_errors = False
        compiled = re2._re2.RE2(self.pattern.encode("utf-8"), options)
        if not compiled.ok():
            raise ValueError(f"RE2 cannot compile it: {compiled.error()}")
        self._groups = tuple((name.decode("utf-8"), index)
                             for name, index in compiled.NamedCapturingGroups())
        self._group_names = frozenset(name for name, _ in self._groups)
        self._start, self._both = re2._Anchor.ANCHOR_START, re2._Anchor.ANCHOR_BOTH
        self._re = compiled
        return compiled

    @property
    def group_names(self) -> frozenset[str]:
        return self._group_names

    @property
    def compiled(self) -> bool:
        """Whether RE2 holds a program for it yet (lazy ones compile on first use)."""
        return self._re is not None

    def match(self, data: bytes) -> Mapping[str, str] | None:
        """Named groups of a match at the start of `data` (None: no match): the caller's
        to keep (a new dict, or a read-only empty mapping). Runs on every candidate line
        of a scan, so it is kept to the fewest Python steps."""
        spans = (self._re or self._compile()).Match(self._start, data, 0, len(data))
        if spans[0][0] < 0:
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
        compiled = self._re or self._compile()
        return bool(compiled.Match(self._both, data, 0, len(data))[0] != _NONE)

    def __repr__(self) -> str:
        return f"LinearRegex({self.pattern!r})"


#: what the literal search may use for its automaton: a few hundred literals need more
#: than the per-pattern default to stay in RE2's DFA (which scans at memory speed)
LITERAL_MAX_MEM = 64 << 20


def _escaped(literal: bytes) -> str:
    """`literal` as RE2 pattern text for Latin-1 mode: each byte itself or `\\xHH`."""
    return "".join(chr(b) if chr(b).isalnum() and b < 128 else f"\\x{b:02x}" for b in literal)


class LiteralSearch:
    """Where the first of many byte strings occurs in a text: one RE2 automaton over the
    alternation of all of them, matched byte by byte (Latin-1 mode, so any bytes, valid
    UTF-8 or not, are searched as they are). ValueError when RE2 refuses it."""

    __slots__ = ("_re", "_unanchored")

    def __init__(self, literals: Iterable[bytes]) -> None:
        wanted = sorted(set(literals))
        if not wanted or not all(wanted):
            raise ValueError("a literal search needs non-empty literals")
        re2 = _engine()
        options = re2.Options()
        options.encoding = re2.Options.Encoding.LATIN1
        options.max_mem = LITERAL_MAX_MEM
        options.never_capture = True
        options.log_errors = False
        compiled = re2._re2.RE2("|".join(map(_escaped, wanted)).encode("latin-1"), options)
        if not compiled.ok():
            raise ValueError(f"RE2 cannot compile the literal search: {compiled.error()}")
        self._re = compiled
        self._unanchored = re2._Anchor.UNANCHORED

    def find(self, data: bytes, pos: int = 0) -> int:
        """The offset of the first literal found at or after `pos`, or -1."""
        return int(self._re.Match(self._unanchored, data, pos, len(data))[0][0])
