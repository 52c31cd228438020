"""The literals the portable engine looks for: one of them is in every match of a
signature's regex (agent/detect/matcher.py searches blocks for them).

Built on agent/detect/prefilter.py's required literals, with one step more: adjacent
parts that match only a few strings are multiplied out, so `[Ll]ink (?:is )?[Dd]own`
gives eight literals such as `: Link is Down` instead of `ink `, which half the benign
lines of a kernel log hold. Longer literals, fewer benign lines to look at.
"""

from __future__ import annotations

from collections.abc import Iterable

# re's own parser constants (the sre_constants module of old): no type stubs
from re import _constants as sre_c  # type: ignore[attr-defined]
from typing import Any

from agent.detect.prefilter import best_set, required_set

#: the most strings an expanded part may stand for (`[Ll]ink (?:is )?[Dd]own`: 8)
EXPANSION_CAP = 16
#: a class of at most this many characters is expanded (`[Ll]`), a larger one is not
_SMALL_CLASS = 4


def _exact_class(av: Any) -> list[str] | None:
    chars: list[str] = []
    for op, value in av:
        if op is sre_c.LITERAL:
            chars.append(chr(value))
        elif op is sre_c.RANGE and value[1] - value[0] < _SMALL_CLASS:
            chars.extend(map(chr, range(value[0], value[1] + 1)))
        else:
            return None  # a negation, a category (\d), a wide range
    return chars if len(chars) <= _SMALL_CLASS else None


def _exact(op: Any, av: Any) -> list[str] | None:
    """Every string one parsed item can match, when they are few; else None."""
    if op is sre_c.LITERAL:
        return [chr(av)]
    if op is sre_c.AT:
        return [""]  # zero-width (\b): the strings around it stay adjacent
    if op is sre_c.IN:
        return _exact_class(av)
    if op is sre_c.SUBPATTERN:
        return _exact_seq(av[-1])
    if op is sre_c.BRANCH:
        out: list[str] = []
        for branch in av[1]:
            sub = _exact_seq(branch)
            if sub is None:
                return None
            out.extend(sub)
        return out if len(out) <= EXPANSION_CAP else None
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT) and (av[0], av[1]) == (0, 1):
        sub = _exact_seq(av[2])
        return None if sub is None or len(sub) >= EXPANSION_CAP else ["", *sub]
    return None


def _exact_seq(items: Iterable[tuple[Any, Any]]) -> list[str] | None:
    run = [""]
    for op, av in items:
        sub = _exact(op, av)
        if sub is None or len(run) * len(sub) > EXPANSION_CAP:
            return None
        run = [a + b for a in run for b in sub]
    return run


def _expanded(items: Iterable[tuple[Any, Any]]) -> list[str] | None:
    """Like `_required`, but adjacent parts that match only a few strings are multiplied
    out (`[Ll]ink (?:is )?[Dd]own` gives 8 literals of 8 to 12 characters, not `ink `):
    longer literals, fewer benign lines for the portable engine to look at."""
    cands: list[list[str]] = []
    run = [""]

    def flush() -> None:
        if all(run) and run != [""]:
            # a string holding another of the set adds nothing to "contains one of them"
            cands.append(sorted({x for x in run if not any(y != x and y in x for y in run)}))

    for op, av in items:
        sub = _exact(op, av)
        if sub is not None and sub != [""] and len(run) * len(sub) > EXPANSION_CAP:
            flush()
            run = sub
            continue
        if sub is not None:
            run = [a + b for a in run for b in sub]
            continue
        flush()
        run = [""]
        inner = required_set([(op, av)])
        if inner:
            cands.append(inner)
    flush()
    return best_set(cands)


def literals_of(items: Iterable[tuple[Any, Any]]) -> tuple[str, ...]:
    """Literals one of which every match of parsed regex items contains (empty if none):
    the most selective set found, small classes and optional parts multiplied out."""
    return tuple(_expanded(list(items)) or ())


