"""What the prefilters look for: a signature's required literals and a cheaper pattern.

Both engines run a prefilter over every line and confirm its candidates with the
signature's own regex (RE2, agent/detect/linear.py), so a prefilter may say "maybe" too
often, never too rarely.

* `required_literals`: a set of literals one of which every match contains (the
  portable engine looks for a longer set built on it, agent/detect/literals.py; the
  catalog refuses a regex without one).
* `prefilter_pattern`: what hyperscan searches for instead of the regex. Each step keeps
  it a superset:
  - bounded repeats open (`{0,80}` -> `{0,}`) and `$` goes: hyperscan compiles a large
    bounded repeat slowly (the first mail catalog took 3 s);
  - the parts before the one that holds the regex's most selective literal go
    (`\\S+ \\S+ (?P<iface>[\\w.@-]+)(?: \\(\\w+\\))?: [Ll]ink is Down` -> `: [Ll]ink is Down`):
    where the regex matches, its tail matches too, further on in the same line. Leading
    loops without a literal cost hyperscan most of its scan time (docs/facts.md);
  - trailing parts that may match nothing go (a `\\b` stays), and a trailing `X+`
    becomes `X`:
    hyperscan's block mode reports every end offset of a match, so `(?P<location>\\S+)`
    at the end reported every character of a kernel function name.

The trims need the pattern's top-level parts (`atoms`). A pattern the tokenizer is not
sure of (a top-level `|`, an escape or construct it does not know) is only widened.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from re import _constants as sre_c  # type: ignore[attr-defined]

# re's own parser (the sre_parse module of old, deprecated under that name): no type stubs
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Literal

from agent.detect.signature import Signature

_BOUNDED = re.compile(r"\{(\d+),\d+\}")
_QUANTIFIER = re.compile(r"(?:[*+?]|\{(\d+)(,\d*)?\})[?+]?")
#: escapes of one letter that stand for a class, an anchor or a control character
_CLASS_ESCAPES = frozenset("dDsSwW")
_ASSERT_ESCAPES = frozenset("bBAzZ")
_CHAR_ESCAPES = frozenset("ntrfv")
#: the group openers the tokenizer knows (others, like (?i) or lookarounds, make it unsure)
_GROUP_OPENER = re.compile(r"\(\?:|\(\?P<\w+>|\(\?[aiLmsux]+:|\((?!\?)")

Kind = Literal["literal", "assert", "other"]


class _Unsure(ValueError):
    """The tokenizer met something it does not know for certain: trim nothing."""


@dataclass(frozen=True)
class Atom:
    """One top-level part of a pattern: `body` then its `quantifier` ("" when none)."""

    body: str
    quantifier: str
    kind: Kind

    @property
    def bare_literal(self) -> bool:
        """One literal character, exactly once."""
        return self.kind == "literal" and not self.quantifier

    @property
    def single_character(self) -> bool:
        """Matches exactly one character: a literal or a class, unquantified."""
        return not self.quantifier and self.kind != "assert" and not self.body.startswith("(")

    @property
    def may_be_empty(self) -> bool:
        """May match nothing (a zero-width `\\b` is kept: it never drops a match)."""
        m = _QUANTIFIER.fullmatch(self.quantifier) if self.quantifier else None
        if m is None:
            return False
        return self.quantifier[0] in "*?" or m.group(1) == "0"

    def at_least_once(self) -> str:
        """The atom matched the fewest times its quantifier allows (at least once)."""
        m = _QUANTIFIER.fullmatch(self.quantifier) if self.quantifier else None
        if m is None or self.quantifier[0] == "+":
            return self.body
        if m.group(1) is not None and m.group(1) not in ("0", "1"):
            return f"{self.body}{{{m.group(1)}}}"
        return self.body


# --------------------------------------------------------------------------- literals
def _best(cands: list[list[str]]) -> list[str] | None:
    """The alternative set whose shortest literal is longest (the most selective)."""
    good = [c for c in cands if c and all(c)]
    if not good:
        return None
    return max(good, key=lambda c: (min(map(len, c)), -len(c)))


def _required(items: Iterable[tuple[Any, Any]]) -> list[str] | None:
    """A set of literals one of which every match of this sequence contains."""
    cands: list[list[str]] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            cands.append(["".join(run)])
            run.clear()

    for op, av in items:
        if op is sre_c.LITERAL:
            run.append(chr(av))
            continue
        if op is sre_c.AT:  # \b: zero-width, the literal run goes on
            continue
        flush()
        if op is sre_c.SUBPATTERN:
            sub = _required(av[-1])
            if sub:
                cands.append(sub)
        elif op is sre_c.BRANCH:
            alts = [_required(b) for b in av[1]]
            if all(alts):
                cands.append(sorted({x for a in alts if a for x in a}))
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT) and av[0] >= 1:
            sub = _required(av[2])
            if sub:
                cands.append(sub)
    flush()
    return _best(cands)


#: for agent/detect/literals.py, which builds on them
best_set = _best
required_set = _required


def required_literals(regex: str) -> tuple[str, ...]:
    """Literals one of which every match must contain (empty if none can be derived)."""
    best = _required(sre_parse.parse(regex).data)
    return tuple(best or ())


# --------------------------------------------------------------------------- pattern
def widen(regex: str) -> str:
    """The regex with every bounded repeat opened and without `$`."""
    out: list[str] = []
    i, n, in_class = 0, len(regex), False
    while i < n:
        c = regex[i]
        if c == "\\":
            out.append(regex[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]" or (bool(out) and out[-1] in ("[", "[^"))
        elif c == "[":
            in_class = True
            if regex[i + 1:i + 2] == "^":
                out.append("[^")
                i += 2
                continue
        elif c == "{":
            m = _BOUNDED.match(regex, i)
            if m is not None:
                out.append("{" + m.group(1) + ",}")
                i = m.end()
                continue
        elif c == "$":
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _escape_end(p: str, i: int) -> tuple[int, Kind]:
    if i + 1 >= len(p):
        raise _Unsure("a trailing backslash")
    c = p[i + 1]
    if not c.isalnum():
        return i + 2, "literal"
    if c in _CHAR_ESCAPES:
        return i + 2, "literal"
    if c in _CLASS_ESCAPES:
        return i + 2, "other"
    if c in _ASSERT_ESCAPES:
        return i + 2, "assert"
    raise _Unsure(f"the escape \\{c}")


def _class_end(p: str, i: int) -> int:
    j = i + 1
    if p[j:j + 1] == "^":
        j += 1
    if p[j:j + 1] == "]":
        j += 1
    while j < len(p):
        c = p[j]
        if c == "\\":
            j += 2
        elif c == "[":
            raise _Unsure("a [ inside a class")
        elif c == "]":
            return j + 1
        else:
            j += 1
    raise _Unsure("an unclosed class")


def _group_end(p: str, i: int) -> int:
    opener = _GROUP_OPENER.match(p, i)
    if opener is None:
        raise _Unsure(f"the group opener at {i}")
    j = opener.end()
    while j < len(p):
        if p[j] == ")":
            return j + 1
        if p[j] == "|":
            j += 1
            continue
        j, _kind = _atom_end(p, j)
        q = _QUANTIFIER.match(p, j)
        if q is not None:
            j = q.end()
    raise _Unsure("an unclosed group")


def _atom_end(p: str, i: int) -> tuple[int, Kind]:
    c = p[i]
    if c == "\\":
        return _escape_end(p, i)
    if c == "[":
        return _class_end(p, i), "other"
    if c == "(":
        return _group_end(p, i), "other"
    if c == ".":
        return i + 1, "other"
    if c in "|)*+?{^$":
        raise _Unsure(f"{c!r} at {i}")
    return i + 1, "literal"


def atoms(pattern: str) -> list[Atom]:
    """The top-level parts of `pattern`, in order; ValueError when unsure."""
    out: list[Atom] = []
    i = 0
    while i < len(pattern):
        end, kind = _atom_end(pattern, i)
        q = _QUANTIFIER.match(pattern, end)
        quantifier = q.group(0) if q is not None else ""
        out.append(Atom(pattern[i:end], quantifier, kind))
        i = end + len(quantifier)
    return out


def _trim_end(parts: list[Atom]) -> str | None:
    """The parts without the trailing ones that may match nothing, the last one matched
    the fewest times (a last group without alternatives is trimmed inside); None when
    nothing would be left."""
    end = len(parts)
    while end > 0 and parts[end - 1].may_be_empty:
        end -= 1
    if end == 0:
        return None
    last = parts[end - 1]
    tail = last.at_least_once()
    opener = _GROUP_OPENER.match(last.body)
    if tail == last.body and opener is not None:
        try:
            inner = _trim_end(atoms(last.body[opener.end():-1]))
        except ValueError:
            inner = None
        if inner is not None:
            tail = opener.group(0) + inner + ")"
    return "".join(a.body + a.quantifier for a in parts[:end - 1]) + tail


def _selectivity(cands: list[str] | None) -> tuple[int, int]:
    """How selective a literal set is (`_best`'s order); (0, 0) for none."""
    return (min(map(len, cands)), -len(cands)) if cands else (0, 0)


def _best_start(parts: list[Atom]) -> int:
    """The last part from which on the pattern still holds its most selective literal:
    the start of a run of literal characters or a mandatory group that holds it."""
    best_from = [(0, 0)] * (len(parts) + 1)
    run_end = len(parts)
    for k in range(len(parts) - 1, -1, -1):
        atom = parts[k]
        here = best_from[k + 1]
        if atom.bare_literal:
            if k + 1 == len(parts) or not parts[k + 1].bare_literal:
                run_end = k + 1
            here = max(here, (run_end - k, -1))
        elif atom.kind == "other" and not atom.may_be_empty and "(" in atom.body:
            here = max(here, _selectivity(_required(sre_parse.parse(atom.body).data)))
        best_from[k] = here
    start = max(k for k in range(len(parts)) if best_from[k] == best_from[0])
    # what comes just before it and matches one character (`: [Ll]ink` rather than
    # `ink`) costs hyperscan nothing and keeps the pattern selective
    while start > 0 and parts[start - 1].single_character:
        start -= 1
    return start


def trim(parts: list[Atom]) -> str | None:
    """The trimmed pattern (module docstring), or None when nothing would be left."""
    if not parts:
        return None
    return _trim_end(parts[_best_start(parts):])


@lru_cache(maxsize=4096)
def prefilter_pattern(regex: str) -> str:
    """What the hyperscan prefilter searches for instead of `regex` (module docstring)."""
    widened = widen(regex)
    try:
        trimmed = trim(atoms(widened))
    except ValueError:
        return widened
    return widened if trimmed is None else trimmed


def pattern_of(sig: Signature) -> str:
    """A signature's prefilter pattern: the one it carries (from the catalog cache,
    agent/detect/catcache.py), else computed."""
    return sig.prefilter or prefilter_pattern(sig.regex)
