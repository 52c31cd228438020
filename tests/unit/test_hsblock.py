"""scan's block matcher in C (agent/detect/_hsblock.c) against the same work in Python:
the lines it maps the matches to, where each message starts, how it groups the lines of
one message, how many lines a block holds. And the extension is there: CI builds it
(a scan without it works, but slower), so its absence fails here."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from importlib import import_module

import pytest

from agent.detect._hsblock import BlockScanner as CScanner
from agent.detect.hsblock import scanner
from agent.detect.hsdb import BLOCK
from agent.detect.linegroups import Grouped, group_rows, message_start
from agent.detect.matcher import MappedHits, Matcher, _HyperscanPrefilter
from agent.detect.prefetch import prefetched
from agent.sources.lineformat import parse_line
from tests.unit._signatures import BENIGN, builtin

LIMIT = 1024
#: bytes the dmesg stamp is made of, and a few that are not
STAMP_BYTES = b"[] 0123456789.x<\t\xc3\xa9"


def _matcher() -> Matcher:
    return Matcher(builtin(), "hyperscan")


def _prefilter(matcher: Matcher) -> _HyperscanPrefilter:
    prefilter = matcher._prefilter
    assert isinstance(prefilter, _HyperscanPrefilter)
    return prefilter


def _c_scanner(matcher: Matcher) -> CScanner:
    prefilter = _prefilter(matcher)
    found = scanner(prefilter.database(BLOCK), prefilter._single)
    assert isinstance(found, CScanner), \
        "the C block scanner is not built (gcc and python3-dev at install)"
    return found


def _block(seed: int, n: int = 3000) -> bytes:
    """Catalog examples and benign lines in every form scan meets: dmesg stamps, plain,
    other prefixes, odd bytes, repeats, raw kmsg escapes, empty lines."""
    rng = random.Random(seed)
    messages = [parse_line(ex.line).text for s in builtin().signatures for ex in s.examples]
    messages += list(BENIGN)
    forms: list[Callable[[str, float], str]] = [
        lambda m, t: f"[{t:12.6f}] {m}", lambda m, t: m, lambda m, t: f"[{t:.3f}]{m}",
        lambda m, t: f"<4>[{t:12.6f}] {m}", lambda m, t: f"6,{int(t)},{int(t)},-;{m}\\x07",
        lambda m, t: f"[{t:30.6f}] {m}", lambda m, t: "", lambda m, t: f"[ 1.2.3] {m}",
    ]
    lines = []
    for k in range(n):
        m = rng.choice(messages[:12]) if k % 3 else rng.choice(messages)
        line = rng.choice(forms)(m, k * 0.37).encode()
        if k % 97 == 0:
            line += b" \xff\x00 odd"
        lines.append(line)
    return b"\n".join(lines)


def test_the_c_scanner_is_what_the_hyperscan_engine_uses() -> None:
    matcher = _matcher()
    assert type(matcher.scan_block(b"x\ny")).__name__ == "BlockHits"
    _c_scanner(matcher)


@pytest.mark.parametrize("seed", range(3))
def test_c_maps_matches_to_the_lines_python_maps_them_to(seed: int) -> None:
    matcher = _matcher()
    block = _block(seed)
    python = MappedHits(block, _prefilter(matcher).block_hits(block))
    c = _c_scanner(matcher).scan(block)
    c_spans: dict[int, tuple[int, int]] = {}
    py_spans: dict[int, tuple[int, int]] = {}
    assert c.candidates(c_spans) == python.candidates(py_spans)
    assert c_spans == py_spans and len(c_spans) > 500
    c_rows = c.rows()
    assert [(i, s, e, cands) for i, s, _k, e, cands in c_rows] == \
        [(i, s, e, cands) for i, s, _k, e, cands in python.rows()]
    for _i, s, k, e, _cands in c_rows:
        assert k == _offset(block, s, e)
    assert c.newlines == block.count(b"\n") == python.newlines


def _offset(data: bytes, s: int, e: int) -> int:
    at = message_start(data[s:e])
    return at if at < 0 else s + at


def _per_line(grouped: Grouped) -> list[tuple[int, tuple[bytes, frozenset[int]] | None]]:
    """Each candidate line with its group's message and candidates (None: on its own)."""
    groups, numbers, group_of, singles = grouped
    out: list[tuple[int, tuple[bytes, frozenset[int]] | None]] = []
    for n, g in zip(numbers, group_of, strict=True):
        out.append((n, (groups[g][0], frozenset(groups[g][1])) if g >= 0 else None))
        assert (g < 0) == (n in singles)
    sizes = [sum(1 for g2 in group_of if g2 == g) for g in range(len(groups))]
    assert sizes == [group[2] for group in groups]
    return out


@pytest.mark.parametrize("seed", range(3))
def test_c_groups_the_lines_python_groups(seed: int) -> None:
    matcher = _matcher()
    block = _block(seed)
    c = _c_scanner(matcher).scan(block)
    kernel = matcher.kernel_indices
    in_c = c.grouped(LIMIT, kernel)
    in_python = group_rows(block, c.rows(), LIMIT, kernel)
    assert _per_line(in_c) == _per_line(in_python)
    grouped = [n for n, key in _per_line(in_c) if key is not None]
    alone = [n for n, key in _per_line(in_c) if key is None]
    assert len(grouped) > 500 and len(alone) > 50  # both kinds were met
    assert len(in_c[0]) < len(grouped) / 5  # repeats share a group
    # each group's first line is a line of that message
    for key, _cands, _size, i, s, e in in_c[0]:
        assert block[s:e].endswith(key) and block.split(b"\n")[i] == block[s:e]


@pytest.mark.parametrize("raw", [
    b"[  123.456789] text", b"[1.2]text", b"[1.2]  two spaces", b"[ 1.2] ", b"[1.2]",
    b"[1.] x", b"[.5] x", b"[1.2.3] x", b"[12345678901234567890.1] x",
    b"[1234567890123456789.1] x", b"[  1.2]] x", b"[\xd9\xa1.2] x", b"[1,2] x",
    b"[Wed Oct 20 03:18:44 2021] x", b"<6>[  1.2] x", b"6,1,2,-;x", b"kern  :info  : x",
    b"Oct 20 03:18:44 h kernel: x", b"plain x", b"\xc3\xa9t\xc3\xa9", b"", b"[ 1.2] x\r",
    b"\t[1.2] x", b"[" + b" " * 21 + b"1.2] x", b"[" + b" " * 22 + b"1.2] x",
])
def test_c_finds_the_message_start_python_finds(raw: bytes) -> None:
    assert _c_scanner(_matcher()).message_start(raw) == message_start(raw)


def test_c_finds_the_message_start_of_random_lines() -> None:
    c = _c_scanner(_matcher())
    rng = random.Random(5)
    for _ in range(20000):
        raw = bytes(rng.choice(STAMP_BYTES) for _ in range(rng.randrange(0, 30)))
        if rng.random() < 0.5:
            raw = b"[" + raw
        assert c.message_start(raw) == message_start(raw), raw


def test_the_c_scanner_refuses_what_is_not_a_block() -> None:
    c = _c_scanner(_matcher())
    with pytest.raises(TypeError):
        c.scan("text, not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c.scan(b"x").candidates([])  # type: ignore[arg-type]
    assert c.scan(b"").rows() == [] and c.scan(b"").newlines == 0


def test_a_database_that_does_not_load_leaves_the_python_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import hyperscan

    library = import_module("hyperscan._hs_ext").__file__
    assert library is not None
    with pytest.raises(ValueError, match="deserialize"):
        CScanner(library, b"not a database", [frozenset({0})], b"")
    prefilter = _prefilter(_matcher())
    monkeypatch.setattr(hyperscan, "dumpb", lambda _db: b"not a database")
    assert scanner(prefilter.database(BLOCK), [frozenset({0})]) is False


def test_prefetched_gives_what_a_plain_loop_gives_in_order() -> None:
    seen_threads: set[str] = set()

    def work(n: int) -> int:
        seen_threads.add(threading.current_thread().name)
        return n * n

    assert list(prefetched(range(50), work)) == [(n, n * n) for n in range(50)]
    assert "nodewarden-prefetch" in seen_threads
    assert list(prefetched([], work)) == []
    assert list(prefetched([3], work)) == [(3, 9)]


def test_prefetched_raises_a_failure_at_its_item_and_leaves_no_thread() -> None:
    def work(n: int) -> int:
        if n == 3:
            raise ValueError("item 3")
        return n

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for n, _ in prefetched(range(10), work):
            got.append(n)
    assert got == [0, 1, 2]
    assert not [t for t in threading.enumerate() if t.name == "nodewarden-prefetch"]


def test_prefetched_stopped_early_joins_its_thread() -> None:
    release = threading.Event()

    def work(n: int) -> int:
        if n == 1:
            release.wait(5)
        return n

    items = prefetched(range(5), work)
    assert next(items) == (0, 0)  # item 1's work is running
    release.set()
    items.close()
    assert not [t for t in threading.enumerate() if t.name == "nodewarden-prefetch"]


def test_random_bytes_give_the_same_lines_and_groups_in_c_and_python() -> None:
    """Hostile input reaches the C code: blocks of random bytes, heavy in newlines,
    stamp characters and pieces of the catalog's examples, map and group as Python maps
    and groups them (and nothing crashes)."""
    matcher = _matcher()
    c_scanner = _c_scanner(matcher)
    prefilter = _prefilter(matcher)
    kernel = matcher.kernel_indices
    rng = random.Random(13)
    pieces = [ex.line.encode() for s in builtin().signatures for ex in s.examples]
    alphabet = STAMP_BYTES + b"\n\n\n\\x\x00\xff"
    for _ in range(150):
        parts = []
        for _ in range(rng.randrange(1, 60)):
            if rng.random() < 0.5:
                parts.append(rng.choice(pieces))
            else:
                parts.append(bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))))
        block = b"".join(parts)
        c = c_scanner.scan(block)
        python = MappedHits(block, prefilter.block_hits(block))
        assert c.candidates() == python.candidates()
        assert c.newlines == block.count(b"\n")
        limit = rng.choice([8, 64, LIMIT])
        assert _per_line(c.grouped(limit, kernel)) == \
            _per_line(group_rows(block, python.rows(), limit, kernel))
