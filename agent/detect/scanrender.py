"""`nodewarden scan`'s output path: each block's output, a repeated message rendered once.

A kernel log repeats itself: the same message comes back with only its dmesg timestamp
changed (a server not responding, a link flapping, a disk's errors). A line's output is
its line number and a part that depends only on what matched and on the line's text,
source, facility and truncation (the `Rendering`'s `tail`). For a line whose
candidates are all kernel signatures and whose form is a plain message or a
`[  sec.frac] ` dmesg stamp, those are all given by the message's bytes: such a line of
valid UTF-8, without NUL, short enough never to be windowed or cut, keeps its tails in a
memo by message (and the candidates it was confirmed with), and the next line with the
same message and the same candidates costs a dictionary look-up instead of a parse, a
regex match per candidate and a rendering. Every other line takes scan_stream's path
(agent/detect/scanner.py), whose matches this renders one by one; tests/unit/
test_scan_memo.py checks both give the same output, line for line.

The memo holds at most MEMO_ENTRIES messages of at most MEMO_MESSAGE_BYTES each (it is
emptied when full): a crafted log of unique lines only makes every line take the
ordinary path. The memo's own bookkeeping (a look-up and a store, ~3 µs a line, about a
tenth of a line matched in full; docs/facts.md) is spared where it does not pay: after
a block whose look-ups found fewer than 1 repeat in MEMO_MIN_HIT_RATE, the memo rests
for MEMO_REST_BLOCKS blocks (`_Policy`); whether it is used never changes the output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from agent.detect.matcher import Matcher
from agent.detect.scanner import ScanStats, line_matches, scan_blocks
from agent.model import SignatureMatch
from agent.sources.lineformat import FAST_STAMP_PATTERN, may_have_prefix

MEMO_ENTRIES = 4096
MEMO_MESSAGE_BYTES = 1024
#: a block whose look-ups found fewer repeats than 1 in MEMO_MIN_HIT_RATE (of at least
#: MEMO_PROBE_LINES) turns the memo off for MEMO_REST_BLOCKS blocks: a look-up and a store
#: cost ~3 µs, a repeat saves ~20 µs
MEMO_MIN_HIT_RATE = 7
MEMO_PROBE_LINES = 256
MEMO_REST_BLOCKS = 16
#: `[  123.456789] `: lineformat's fast dmesg form (the `]` within the first 24 bytes),
#: and the space after it
_STAMP = re.compile(FAST_STAMP_PATTERN.encode("ascii"))


class Rendering(Protocol):
    """How a match is printed: `prefix`, the line number, then `tail(match)`."""

    @property
    def prefix(self) -> str:
        """What every output line starts with."""

    def tail(self, match: SignatureMatch) -> str:
        """The output after the line number: the same for two matches of the same
        signature with the same groups, on lines of the same text, source, facility
        and truncation."""


def message_start(raw: bytes) -> int:
    """Where the kernel message of a plain or fast-form dmesg line starts (as
    agent/sources/lineformat.py parses it); -1 for any other form."""
    first = raw[:1]
    if first == b"[":
        m = _STAMP.match(raw)
        return -1 if m is None else m.end()
    if first.isascii() and may_have_prefix(first.decode()):
        return -1
    return 0


def _clean(raw: bytes) -> bool:
    """Valid UTF-8 without NUL: a line whose decoding counts no oddity."""
    if b"\0" in raw:
        return False
    if raw.isascii():
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: what the memo keeps of a message: the candidates it was confirmed with, its output
#: tails, and its findings and recoveries
_Entry = tuple[set[int], tuple[str, ...], int, int]


def _entry(candidates: set[int], matches: list[SignatureMatch],
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
    kernel = matcher.kernel_indices
    stamp = _STAMP.match
    prefix = rendering.prefix
    policy = _Policy()
    for blk in scan_blocks(stream, matcher, stats):
        out: list[str] = []
        line, candidates, first = blk.line, blk.candidates, blk.first + 1
        use, looked, hits = policy.on, 0, 0
        for i in sorted(candidates):
            raw, cands = line(i), candidates[i]
            key = None
            if use and cands <= kernel and len(raw) <= MEMO_MESSAGE_BYTES:
                m = stamp(raw)  # the common form, without a call to message_start
                start = m.end() if m is not None else message_start(raw)
                if start >= 0:
                    key = raw[start:]
                    entry = memo.get(key)
                    looked += 1
                    if entry is not None and entry[0] == cands:
                        hits += 1
                        if entry[1]:
                            _repeat(entry, f"{prefix}{first + i}", out, stats)
                        continue
            entry = _entry(cands, line_matches(blk, i, matcher, stats), rendering)
            if entry[1]:
                _repeat(entry, f"{prefix}{first + i}", out, stats)
            if key is not None and _clean(raw):
                if len(memo) >= MEMO_ENTRIES:
                    memo.clear()
                memo[key] = entry
        policy.after(looked, hits)
        if out:
            out.append("")
            yield "\n".join(out)


class _Policy:
    """Whether the memo is used: on, off for a rest when a block's look-ups found too
    few repeats, then on again (a log's repeats come and go)."""

    def __init__(self) -> None:
        self.on = True
        self._resting = 0

    def after(self, looked: int, hits: int) -> None:
        if self.on:
            self.on = looked < MEMO_PROBE_LINES or hits * MEMO_MIN_HIT_RATE >= looked
        else:
            self._resting += 1
            if self._resting >= MEMO_REST_BLOCKS:
                self.on, self._resting = True, 0


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
