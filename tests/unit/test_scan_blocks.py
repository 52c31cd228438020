"""scan's blocks (agent/detect/scanner.py): a block that is not split (clean ASCII, no
line that can be longer than MAX_MATCH_CHARS) gives the same lines, line numbers,
candidates and counts as the split one; any block that could hold a long line, a NUL or
non-ASCII bytes is split."""

from __future__ import annotations

import io
import random

import pytest

from agent.detect.linegroups import start_of
from agent.detect.matcher import Matcher
from agent.detect.scanner import LineBlocks, ScanStats, _short_lines, scan_blocks
from agent.detect.signature import MAX_MATCH_CHARS
from agent.sources.lineformat import parse_line
from tests.unit._signatures import BENIGN, builtin


def _corpus(seed: int, extra: list[bytes]) -> bytes:
    """Examples and benign lines (short and ASCII, so that a block may stay whole), and
    `extra`."""
    rng = random.Random(seed)
    messages = [m for m in [parse_line(ex.line).text.encode() for s in builtin().signatures
                            for ex in s.examples] + [b.encode() for b in BENIGN]
                if m.isascii() and b"\0" not in m and len(m) < 1000]
    lines = [b"[%12.6f] " % (n * 0.5) + rng.choice(messages) for n in range(4000)]
    for i, line in enumerate(extra):
        lines.insert(500 + 700 * i, line)
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("extra", [
    [], [b"x" * (MAX_MATCH_CHARS - 1)], [b"x" * MAX_MATCH_CHARS],
    [b"nfs: server a not responding " + b"y" * MAX_MATCH_CHARS], [b"caf\xc3\xa9 ok"],
    [b"nul \0 here"], [b"bad \xff utf-8"], [b"z" * 70000],
])
def test_lazy_blocks_give_what_split_blocks_give(extra: list[bytes]) -> None:
    data = _corpus(3, extra)
    split_stats, lazy_stats = ScanStats(), ScanStats()
    split = list(LineBlocks(io.BytesIO(data), split_stats, block_bytes=64 << 10))
    reader = LineBlocks(io.BytesIO(data), lazy_stats, block_bytes=64 << 10)
    whole = 0
    for (block, lines), (lazy_block, lazy_lines) in zip(split, reader.lazy(), strict=True):
        assert lazy_block == block
        if lazy_lines is None:
            whole += 1
            assert max(map(len, lines)) <= MAX_MATCH_CHARS
            assert block.isascii() and b"\0" not in block
        else:
            assert lazy_lines == lines
    assert vars(lazy_stats) == vars(split_stats)
    assert whole > 0


@pytest.mark.parametrize("engine", ["hyperscan", "portable"])
def test_a_whole_block_has_the_candidates_and_lines_of_a_split_one(
        engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEWARDEN_MATCHER", engine)
    data = _corpus(4, [])
    matcher = Matcher(builtin())
    seen = whole = 0
    for blk in scan_blocks(io.BytesIO(data), matcher, ScanStats()):
        whole += blk.lines is None
        lines = blk.block.split(b"\n")
        assert blk.candidates == matcher.candidates(blk.block) or blk.lines is not None
        for i, start, message, end, _cands in blk.rows:
            assert blk.block[start:end] == lines[i]
            assert message in (-2, start_of(blk.block, start, end))
            seen += 1
        lines_before = blk.first
        assert data.split(b"\n")[lines_before : lines_before + len(lines)] == lines
    assert seen > 500 and whole > 0


@pytest.mark.parametrize("run", [2 * 2048 - 1, MAX_MATCH_CHARS + 1, 10000])
def test_a_run_long_enough_to_be_a_long_line_is_seen(run: int) -> None:
    for offset in range(0, 2100, 7):
        block = (b"a\n" * 1100)[:offset] + b"\n" + b"r" * run + b"\nb\nc"
        assert not _short_lines(block), (run, offset)


def test_short_lines_are_short() -> None:
    assert _short_lines(b"line\n" * 10000)
    assert _short_lines(b"")
    assert _short_lines(b"x" * 2047)
