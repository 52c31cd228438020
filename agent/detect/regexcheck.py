"""Which regex constructs a signature may use: those RE2, Python `re` and hyperscan all
honour, without anchors that would break matching at the start of the message
(docs/signatures.md, "Regex rules"). Found by walking re's own parse of the regex."""

from __future__ import annotations

import re
from collections.abc import Sequence

# re's own parser (the sre_parse module of old, deprecated under that name): no type stubs
from re import _constants as sre_c  # type: ignore[attr-defined]
from typing import Any

_FORBIDDEN_AT = {
    sre_c.AT_BEGINNING: "no '^' or \\A: a regex is matched at the start of the message "
                        "already",
    sre_c.AT_BEGINNING_STRING: "no '^' or \\A: a regex is matched at the start of the message "
                               "already",
    sre_c.AT_END_STRING: "no \\Z: end the regex with '$' to pin the end of the message",
    sre_c.AT_BEGINNING_LINE: "no multi-line anchors",
    sre_c.AT_END_LINE: "no multi-line anchors",
}
_FORBIDDEN_OPS = {
    sre_c.ASSERT: "lookarounds are not supported",
    sre_c.ASSERT_NOT: "lookarounds are not supported",
    sre_c.GROUPREF: "backreferences are not supported",
    sre_c.GROUPREF_EXISTS: "conditional groups are not supported",
}
_INLINE_FLAGS = "inline flags (?i) (?m) (?s) (?x) (also scoped: (?i:...)) are not supported"


_UNSUPPORTED_WRAPPERS = {
    sre_c.POSSESSIVE_REPEAT: "possessive quantifiers are not supported",
    sre_c.ATOMIC_GROUP: "atomic groups are not supported",
}
_REPEATS = (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT)


def regex_problems(parsed: Any) -> list[str]:
    """Constructs the engines cannot honour or that break anchoring, found by walking the
    parsed regex (`$` is allowed: it pins the end of the message on every engine)."""
    found: list[str] = []

    def walk(items: Sequence[tuple[Any, Any]]) -> None:
        for op, av in items:
            problem = _problem(op, av)
            if problem is not None:
                found.append(problem)
            for child in _children(op, av):
                walk(child)

    walk(parsed.data)
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE):
        found.append(_INLINE_FLAGS)
    return sorted(set(found))


def _problem(op: Any, av: Any) -> str | None:
    if op in _FORBIDDEN_OPS:
        return _FORBIDDEN_OPS[op]
    if op is sre_c.AT:
        return _FORBIDDEN_AT.get(av)
    if op is sre_c.SUBPATTERN and (av[1] or av[2]):
        return _INLINE_FLAGS  # (?i:...): the required literal would be case-bound
    return _UNSUPPORTED_WRAPPERS.get(op)


def _children(op: Any, av: Any) -> list[Sequence[tuple[Any, Any]]]:
    """The sub-patterns a node holds (an atomic group's are not looked into: refused)."""
    if op is sre_c.SUBPATTERN:
        return [av[-1]]
    if op is sre_c.BRANCH:
        return list(av[1])
    if op in _REPEATS:
        return [av[2]]
    return []
