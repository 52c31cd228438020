"""Build a SignatureMatch for a matched line at a fraction of its constructor's cost.

SignatureMatch is a frozen dataclass: its `__init__` sets each of its seven fields
through `object.__setattr__`, about 3 µs a match, more than the regex that found it.
`scan` builds one per matched line, so a match is made here by copying the field values
of a SignatureMatch the real constructor made once per signature (so fields added later
with defaults are picked up) and setting the three that depend on the line: `line`,
`groups` and, when it names a group, `subject`. The same trick as
agent/sources/lineformat.py; tests/unit/test_scan_fast.py checks the result equals the
constructor's, field for field, for every example of the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from agent.detect.signature import Signature
from agent.model import EMPTY, LogLine, SignatureMatch

_new = object.__new__
_PLACEHOLDER = LogLine(source="", text="", t=0.0)


class MatchTemplate:
    """The constant fields of one signature's matches, made by the real constructor."""

    __slots__ = ("_fields", "_group")

    def __init__(self, sig: Signature) -> None:
        #: the named group that gives the subject, or None when the subject is literal
        self._group = sig.subject if sig.subject_is_group else None
        made = SignatureMatch(signature=sig.id, problem=sig.problem, subject=sig.subject,
                              severity=sig.severity, line=_PLACEHOLDER,
                              recovery=sig.recovery)
        self._fields = dict(vars(made))

    def new(self, line: LogLine, groups: Mapping[str, str]) -> SignatureMatch:
        """What `SignatureMatch(..., line=line, groups=MappingProxyType(groups))` gives,
        the subject taken from `groups` as Signature.subject_of does."""
        match: SignatureMatch = _new(SignatureMatch)
        d = match.__dict__
        d.update(self._fields)
        d["line"] = line
        d["groups"] = MappingProxyType(groups) if groups else EMPTY
        if self._group is not None:
            d["subject"] = groups.get(self._group) or "unknown"
        return match
