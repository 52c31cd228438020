"""The hyperscan prefilter pattern: a cheaper superset of a signature's regex
(agent/detect/prefilter.py). A prefilter may say "maybe" too often, never too rarely."""

from __future__ import annotations

import random
import re

import pytest

from agent.detect.prefilter import atoms, prefilter_pattern, required_literals, widen
from tests.unit._signatures import builtin


def test_required_literals() -> None:
    assert required_literals(r"nfs: server (?P<s>\S+) not responding") == (" not responding",)
    # sre_parse factors out the common prefix "O"; what is left is still required
    assert set(required_literals(r"(?:Out of memory|OOM here): x")) == {"ut of memory",
                                                                        "OM here"}
    assert required_literals(r"\d+\s+") == ()


@pytest.mark.parametrize(("regex", "widened"), [
    (r"a{0,80}b{2,3}c{4}", r"a{0,}b{2,}c{4}"),
    (r"x\{1,2\}[{1,2}$]y$", r"x\{1,2\}[{1,2}$]y"),
    (r"(?:a|b$)[]{0,9}]z{1,5}$", r"(?:a|b)[]{0,9}]z{1,}"),
    (r"[^]$]\${0,1}", r"[^]$]\${0,}"),
])
def test_widen_opens_bounded_repeats_and_drops_the_end_anchor(regex: str, widened: str) -> None:
    assert widen(regex) == widened


@pytest.mark.parametrize(("pattern", "parts"), [
    (r"ab\(c\)", ["a", "b", r"\(", "c", r"\)"]),
    (r"\S+ (?P<x>[\w.]+)?: x{2,}", [r"\S+", " ", r"(?P<x>[\w.]+)?", ":", " ", "x{2,}"]),
    (r"[]a)]*(?:b|(c\)))+?d", [r"[]a)]*", r"(?:b|(c\)))+?", "d"]),
    (r"[^]|]\b\n", [r"[^]|]", r"\b", r"\n"]),
])
def test_atoms_are_the_top_level_parts(pattern: str, parts: list[str]) -> None:
    found = atoms(pattern)
    assert [a.body + a.quantifier for a in found] == parts
    assert "".join(parts) == pattern


@pytest.mark.parametrize("pattern", [
    r"a|b", r"(?i)ab", r"(?=a)b", r"a\x41", r"a\p{L}", r"a[[:alpha:]]", r"a{x", r"(ab",
    r"[ab", "ab\\", r"ab)",
])
def test_atoms_refuse_what_they_do_not_know(pattern: str) -> None:
    with pytest.raises(ValueError):
        atoms(pattern)


@pytest.mark.parametrize(("regex", "prefilter"), [
    # the parts before the most selective literal go, except single characters just
    # before it (`: [Ll]`); a zero-width \b stays
    (r"\S+ \S+ (?P<i>[\w.-]+)(?: \(\w+\))?: [Ll]ink (?:is )?[Dd]own\b",
     r": [Ll]ink (?:is )?[Dd]own\b"),
    # ... the literal may be a group's: the leading loop goes
    (r"\((?:[^)\n]|\)[^:<\n]){0,80}\): (?:Password query failed|LDAP hangs): \S+$",
     r"\): (?:Password query failed|LDAP hangs): \S"),
    # the best of equals is the last; a longer one wins
    (r"ab\d+cd\d+ef", r"ef"),
    (r"abc\d+de\d+", r"abc\d+de\d"),
    # trailing optional parts go, a trailing X+ becomes X, {m,n} keeps its m; a last group
    # without alternatives is trimmed inside
    (r"WARNING: at (?P<loc>\S+)(?: \[\w+\])?$", r"WARNING: at (?P<loc>\S)"),
    (r"abc\d{2,5}", r"abc\d{2}"),
    (r"abc(?:x|y)*?", r"abc"),
    (r"abc(?:x|y)+", r"abc(?:x|y)"),
    # a top-level alternation is only widened
    (r"ab{1,3}c|d$", r"ab{1,}c|d"),
    # nothing would be left: only widened
    (r"(?:ab)?", r"(?:ab)?"),
])
def test_prefilter_pattern_trims(regex: str, prefilter: str) -> None:
    assert prefilter_pattern(regex) == prefilter


def test_prefilter_pattern_matches_whatever_the_signature_matches() -> None:
    for sig in builtin().signatures:
        pattern = re.compile(prefilter_pattern(sig.regex), re.ASCII)
        for ex in sig.examples:
            assert pattern.search(ex.line), (sig.id, ex.line)


def _random_regex(rng: random.Random, depth: int = 0) -> str:
    pieces = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.45:
            atom = rng.choice(["a", "b", ":", " ", r"\(", r"\)", r"\.", r"\n"])
        elif kind < 0.75:
            atom = rng.choice([r"\S", r"\w", r"\d", ".", "[ab]", "[^a:]", r"\b"])
        elif depth < 2:
            alts = [_random_regex(rng, depth + 1) for _ in range(rng.randint(1, 3))]
            atom = rng.choice(["(?:", "(", f"(?P<g{rng.randrange(99)}>"]) \
                + "|".join(alts) + ")"
        else:
            atom = "a"
        if atom != r"\b" and rng.random() < 0.4:
            atom += rng.choice(["?", "*", "+", "{2}", "{0,3}", "{1,2}", "+?", "{2,}"])
        pieces.append(atom)
    regex = "".join(pieces)
    return regex + ("$" if depth == 0 and rng.random() < 0.2 else "")


def test_a_random_regex_s_prefilter_matches_wherever_it_does() -> None:
    """Random regexes of the constructs signatures use, on random texts of their
    alphabet: wherever the regex matches, its prefilter pattern matches too."""
    rng = random.Random(7)
    tried = trimmed = 0
    for _ in range(3000):
        regex = _random_regex(rng)
        try:
            original = re.compile(regex.replace("(?P<g", "(?P<h"), re.ASCII)
        except re.error:
            continue  # a duplicate group name
        prefilter = prefilter_pattern(regex)
        pattern = re.compile(prefilter, re.ASCII)
        trimmed += prefilter != widen(regex)
        for _ in range(20):
            text = "".join(rng.choice("ab: ()._1\nxy") for _ in range(rng.randint(0, 14)))
            if original.search(text):
                tried += 1
                assert pattern.search(text), (regex, prefilter, text)
    assert tried > 5000 and trimmed > 1000  # the test exercised trimming, not just widening
