"""`nodewarden scan`'s output path: each block's output, a repeated message matched once.

The candidate lines of a block come grouped by message (agent/detect/linegroups.py: a
plain or dmesg-stamped kernel line, clean and short, is grouped with the lines of the
same message and candidates). A group is matched once, or not at all when the memo
holds its message from an earlier block: the memo keeps each message's output tails
(and the candidates it was confirmed with) and its findings and recoveries. Every other
line takes scan_stream's path (agent/detect/scanner.py), whose matches this renders one
by one; tests/unit/test_scan_memo.py checks both give the same output, line for line.

The memo holds at most MEMO_ENTRIES messages of at most MEMO_MESSAGE_BYTES each (it is
emptied when full): a crafted log of unique lines only makes every group match once.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from typing import BinaryIO, Protocol

from agent.detect.linegroups import message_start
from agent.detect.matcher import Matcher
from agent.detect.scanner import Block, ScanStats, line_matches, scan_blocks
from agent.model import SignatureMatch

__all__ = ["MEMO_ENTRIES", "MEMO_MESSAGE_BYTES", "Rendering", "message_start", "scan_rendered"]

MEMO_ENTRIES = 4096
MEMO_MESSAGE_BYTES = 1024


class Rendering(Protocol):
    """How a match is printed: `prefix`, the line number, then `tail(match)`."""

    @property
    def prefix(self) -> str:
        """What every output line starts with."""

    def tail(self, match: SignatureMatch) -> str:
        """The output after the line number: the same for two matches of the same
        signature with the same groups, on lines of the same text, source, facility
        and truncation."""


#: what the memo keeps of a message: the candidates it was confirmed with, its output
#: tails, and its findings and recoveries
_Entry = tuple[Set[int], tuple[str, ...], int, int]


def _entry(candidates: Set[int], matches: list[SignatureMatch],
           rendering: Rendering) -> _Entry:
    """What a line's matches print and count."""
    if not matches:
        return candidates, (), 0, 0
    recoveries = [m.recovery for m in matches].count(True)
    return (candidates, tuple([rendering.tail(m) for m in matches]),
            len(matches) - recoveries, recoveries)


def scan_rendered(stream: BinaryIO, matcher: Matcher, stats: ScanStats,
                  rendering: Rendering) -> Iterator[str]:
    """The output of every match in the stream, a string per block of lines (each
    output line ending with a newline); `stats` is filled in as it goes."""
    memo: dict[bytes, _Entry] = {}
    for blk in scan_blocks(stream, matcher, stats):
        out = _block_output(blk, memo, matcher, stats, rendering)
        if out:
            out.append("")
            yield "\n".join(out)


def _block_output(blk: Block, memo: dict[bytes, _Entry], matcher: Matcher,
                  stats: ScanStats, rendering: Rendering) -> list[str]:
    """A block's output lines: each group's tails from the memo or matched once, then
    every candidate line in order."""
    groups, numbers, group_of, singles = blk.grouped(MEMO_MESSAGE_BYTES, matcher.kernel_indices)
    tails: list[tuple[str, ...]] = []
    for key, cands, size, i, s, e in groups:
        entry = memo.get(key)
        if entry is None or entry[0] != cands:
            entry = _entry(cands, line_matches(blk, (i, s, -1, e, cands), matcher, stats),
                           rendering)
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[key] = entry
        tails.append(entry[1])
        if entry[1]:
            stats.matched_lines += size
            stats.findings += entry[2] * size
            stats.recoveries += entry[3] * size
    out: list[str] = []
    append = out.append
    prefix, first = rendering.prefix, blk.first + 1
    for n, g in zip(numbers, group_of, strict=True):
        if g >= 0:
            t = tails[g]
            if len(t) == 1:
                append(f"{prefix}{first + n}{t[0]}")
            elif t:
                out.extend(f"{prefix}{first + n}{x}" for x in t)
            continue
        row = singles[n]
        entry = _entry(row[4], line_matches(blk, row, matcher, stats), rendering)
        if entry[1]:
            _repeat(entry, f"{prefix}{first + n}", out, stats)
    return out


def _repeat(entry: _Entry, n: str, out: list[str], stats: ScanStats) -> None:
    """A matching line's output and counts, from its entry (`n`: its line's prefix and
    number)."""
    tails = entry[1]
    if len(tails) == 1:
        out.append(n + tails[0])
    else:
        out.extend(n + t for t in tails)
    stats.matched_lines += 1
    stats.findings += entry[2]
    stats.recoveries += entry[3]
