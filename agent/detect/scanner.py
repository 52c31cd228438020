"""Scan a stream of log lines with the catalog: what `nodewarden scan` and bench/scan.py run.

Input is read in binary, in blocks of BLOCK_BYTES, and split on `\\n`. A line longer than
MAX_LINE_BYTES keeps its head and its last TAIL_BYTES (the middle is skipped as it streams
by, and the line is counted as truncated), so a 10 MB line costs one read, not 10 MB of
matching, and its fixed fields at the end still count. Invalid
UTF-8 is replaced (U+FFFD), NUL and other binary bytes pass through: both are counted.

Each block goes through the matcher's prefilter in one call; only candidate lines are
decoded, parsed (agent.sources.lineformat: dmesg, syslog, journal, raw kmsg records,
mixed per line) and confirmed. A line is tried as a kernel message (source `kmsg`, the
prefix stripped) and, whole, as a line of every log source the catalog names
(`log:mail`...), since a scanned file does not say where it came from.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Iterable, Iterator, Set
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from agent.detect.hsblock import FoundInBlock
from agent.detect.linegroups import Grouped, Row, group_rows
from agent.detect.matcher import Matcher
from agent.detect.prefetch import in_turn, prefetched
from agent.detect.signature import CUT_MARK, MAX_MATCH_CHARS, TAIL_CHARS
from agent.model import LogLine, SignatureMatch
from agent.sources.lineformat import parse_line

MAX_LINE_BYTES = 64 * 1024
BLOCK_BYTES = 1024 * 1024
#: the end of an over-long line that is kept: room for the message's last TAIL_CHARS
#: characters even in 4-byte UTF-8
TAIL_BYTES = 4 * TAIL_CHARS
CUT_BYTES = CUT_MARK.encode()


@dataclass
class ScanStats:
    """What the scan saw; printed to stderr by `nodewarden scan`."""

    bytes_read: int = 0
    lines: int = 0
    matched_lines: int = 0
    findings: int = 0
    recoveries: int = 0
    truncated: int = 0
    invalid_utf8: int = 0
    nul_lines: int = 0

    def summary(self) -> str:
        if self.bytes_read == 0:
            return "scan: empty input (0 lines)"
        return (
            f"scan: {self.lines} lines read, {self.matched_lines} matched "
            f"({self.findings} findings, {self.recoveries} recoveries); "
            f"{self.truncated} truncated at {MAX_LINE_BYTES} bytes, "
            f"{self.invalid_utf8} with invalid UTF-8 (replaced), "
            f"{self.nul_lines} with NUL bytes"
        )


@dataclass(frozen=True)
class ScanHit:
    """One matching line: its 1-based number and what matched."""

    line_no: int
    match: SignatureMatch


class LineBlocks:
    """Reads a binary stream as blocks of complete, capped lines.

    A line longer than `max_line` keeps its first bytes and its last TAIL_BYTES (the real
    end of the line, where fixed fields after a client-supplied one are), joined by the
    catalog's CUT_MARK; the middle is skipped as it streams by, so memory stays bounded.
    """

    def __init__(self, stream: BinaryIO, stats: ScanStats, *,
                 max_line: int = MAX_LINE_BYTES, block_bytes: int = BLOCK_BYTES) -> None:
        if max_line <= 2 * TAIL_BYTES:
            raise ValueError(f"max_line must be above {2 * TAIL_BYTES} bytes")
        self._stream = stream
        self._stats = stats
        self._max = max_line
        self._block = block_bytes
        #: indices (in the block last yielded) of its lines that were cut at max_line
        self.cut: set[int] = set()
        #: the length of the longest line of the block last yielded
        self.longest = 0
        #: how many lines the block last yielded by `lazy` holds (None: not counted)
        self.count: int | None = 0
        self._count_whole = True

    def _cut(self, head: bytes, tail: bytes, index: int = 0) -> bytes:
        self.cut.add(index)
        self._stats.truncated += 1
        self._stats.lines += 1
        return head[: self._max - TAIL_BYTES - len(CUT_BYTES)] + CUT_BYTES + tail[-TAIL_BYTES:]

    def _cap(self, lines: list[bytes]) -> list[bytes]:
        out = []
        for i, line in enumerate(lines):
            if len(line) > self._max:
                line = self._cut(line, line, i)
            else:
                self._stats.lines += 1
            out.append(line)
        return out

    def __iter__(self) -> Iterator[tuple[bytes, list[bytes]]]:
        """(block, lines) pairs with block == b"\\n".join(lines)."""
        for block, lines in self._iterate(lazy=False):
            yield block, lines if lines is not None else block.split(b"\n")

    def lazy(self, *, count: bool = True) -> Iterator[tuple[bytes, list[bytes] | None]]:
        """As iterating, but a block of clean ASCII (no NUL) none of whose lines can be
        longer than MAX_MATCH_CHARS comes whole, with None for its lines (`longest` is then
        0): it is not split, its lines are only counted. `count=False` leaves them to the
        caller (`count` is then None; scan's C scanner counts them off the main thread)."""
        self._count_whole = count
        return self._iterate(lazy=True)

    def _complete(self, block: bytes, lazy: bool) -> tuple[bytes, list[bytes] | None]:
        """A block of complete lines, split and capped (or left whole: `lazy`)."""
        stats = self._stats
        self.cut = set()
        if lazy and block.isascii() and b"\0" not in block and _short_lines(block):
            self.count = None
            if self._count_whole:
                self.count = block.count(b"\n") + 1
                stats.lines += self.count
            self.longest = 0
            return block, None
        lines = block.split(b"\n")
        self.count = len(lines)
        self.longest = max(map(len, lines))
        if self.longest > self._max:
            lines = self._cap(lines)
            block = b"\n".join(lines)
        else:
            stats.lines += len(lines)
        return block, lines

    def _iterate(self, lazy: bool) -> Iterator[tuple[bytes, list[bytes] | None]]:
        stats = self._stats
        pending = b""
        long_head: bytes | None = None  # inside an over-long line: its first bytes
        long_tail = b""  # ... and its last TAIL_BYTES so far
        while True:
            data = self._stream.read(self._block)
            if not data:
                break
            stats.bytes_read += len(data)
            if long_head is not None:
                nl = data.find(b"\n")
                if nl < 0:
                    long_tail = (long_tail + data)[-TAIL_BYTES:]
                    continue
                self.cut = set()
                line = self._cut(long_head, long_tail + data[:nl])
                long_head, long_tail = None, b""
                self.longest = len(line)
                yield line, [line]
                data = data[nl + 1 :]
            buf = pending + data if pending else data
            last = buf.rfind(b"\n")
            if last >= 0:
                pending = buf[last + 1 :]
                yield self._complete(buf[:last], lazy)
            else:
                pending = buf
            if len(pending) > self._max:
                long_head, long_tail = pending, pending[-TAIL_BYTES:]
                pending = b""
        self.cut = set()
        if long_head is not None:
            line = self._cut(long_head, long_tail)
            self.longest = len(line)
            yield line, [line]
        elif pending:
            stats.lines += 1
            self.longest = len(pending)
            yield pending, [pending]


#: a run of non-newline bytes of 2 * _WINDOW - 1 or more fills a whole aligned window
_WINDOW = MAX_MATCH_CHARS // 2


def _short_lines(block: bytes) -> bool:
    """True when no line of `block` can be longer than MAX_MATCH_CHARS: every aligned
    window of _WINDOW bytes holds a newline (a few hundred `find`s per MiB)."""
    find = block.find
    return all(find(b"\n", k, k + _WINDOW) >= 0
               for k in range(0, len(block) - _WINDOW + 1, _WINDOW))


def decode(raw: bytes, stats: ScanStats) -> str:
    """A candidate line as text (invalid UTF-8 replaced); its oddities are counted."""
    if b"\0" in raw:
        stats.nul_lines += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8 += 1
        return raw.decode("utf-8", "replace")


def _count_oddities(block: bytes, lines: list[bytes], stats: ScanStats,
                    skip: Collection[int]) -> None:
    """Count invalid-UTF-8 and NUL lines that are not candidates (those count in `decode`)."""
    if block.isascii() and b"\0" not in block:
        return
    for i, raw in enumerate(lines):
        if i in skip:
            continue
        if b"\0" in raw:
            stats.nul_lines += 1
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.invalid_utf8 += 1


def match_raw_line(raw: str, matcher: Matcher, candidates: Iterable[int]) -> list[SignatureMatch]:
    """A decoded line, tried as a kernel message and, whole, as a line of each log source."""
    cands = candidates if isinstance(candidates, (set, frozenset)) else set(candidates)
    kernel = parse_line(raw, source="kmsg")
    if cands <= matcher.kernel_indices:  # the common case: only kernel signatures
        return matcher.confirm_kernel(kernel, cands)
    out = matcher.confirm(kernel, cands) if not matcher.kernel_indices.isdisjoint(cands) \
        else []
    for source in sorted(matcher.sources_of(cands) - {"kmsg"}):
        whole = LogLine(source=source, text=raw.rstrip("\r\n"), t=0.0, facility=kernel.facility)
        out.extend(matcher.confirm(whole, cands))
    return out


_new = object.__new__


def _hit(line_no: int, match: SignatureMatch) -> ScanHit:
    """ScanHit(line_no, match) without the frozen dataclass's per-field __setattr__
    (the trick of agent/detect/matchtemplate.py; both fields are set here)."""
    hit: ScanHit = _new(ScanHit)
    hit.__dict__.update(line_no=line_no, match=match)
    return hit


def _truncated(m: SignatureMatch) -> SignatureMatch:
    return dataclasses.replace(m, line=dataclasses.replace(m.line, truncated=True))


@dataclass
class Block:
    """One block of lines and what the prefilter found in it."""

    #: the block's lines (without their `\\n`), or None when it was not split
    lines: list[bytes] | None
    #: the prefilter's pass over `block`
    found: FoundInBlock
    #: the 0-based number (in the stream) of the block's first line
    first: int
    #: indices of its lines cut at MAX_LINE_BYTES
    cut: frozenset[int]
    #: the lines joined by `\\n`
    block: bytes
    #: every signature's index: a long line is a candidate for each
    everything: frozenset[int] = frozenset()

    @functools.cached_property
    def rows(self) -> list[Row]:
        """Every candidate line, in order."""
        rows = self.found.rows()
        if self.lines is not None and any(len(raw) > MAX_MATCH_CHARS for raw in self.lines):
            rows = _with_long_lines(rows, self.lines, self.everything)
        return rows

    @property
    def candidates(self) -> dict[int, Set[int]]:
        """Line index -> indices of the signatures that may match it."""
        return {row[0]: row[4] for row in self.rows}

    def grouped(self, limit: int, kernel: Set[int]) -> Grouped:
        """The candidate lines grouped by message (agent/detect/linegroups.py): in C for a
        block that was not split, where the engine can."""
        if self.lines is None:
            return self.found.grouped(limit, kernel)
        return group_rows(self.block, self.rows, limit, kernel)


def scan_blocks(stream: BinaryIO, matcher: Matcher, stats: ScanStats) -> Iterator[Block]:
    """The stream's blocks with what the prefilter found; oddities of non-candidate lines
    are counted (a candidate's count when it is decoded: `decode`). The next block is read
    and prefiltered (agent/detect/prefetch.py: in a thread, while the caller confirms
    this one's candidates) before this one is yielded."""
    reader = LineBlocks(stream, stats)
    everything = matcher.all_indices

    def read() -> Iterator[_Read]:
        for block, lines in reader.lazy(count=False):
            yield _Read(block, lines, frozenset(reader.cut))

    first = 0
    # ahead in a thread only when the engine's pass lets go of the GIL: the portable
    # engine's would only contend with this thread's (bench/scan.py: 26% -> 18% of floor)
    ahead = prefetched if matcher.block_pass_releases_gil() else in_turn
    for r, found in ahead(read(), lambda r: matcher.scan_block(r.block)):
        if r.lines is None:  # a whole block: the engine counted its lines
            count = found.newlines + 1
            stats.lines += count
        else:
            count = len(r.lines)
        blk = Block(r.lines, found, first, r.cut, r.block, everything)
        first += count
        if r.lines is not None:
            _count_oddities(r.block, r.lines, stats, {row[0] for row in blk.rows})
        yield blk


def _with_long_lines(rows: list[Row], lines: list[bytes], everything: frozenset[int]
                     ) -> list[Row]:
    """`rows` with every line over MAX_MATCH_CHARS a candidate for every signature: it is
    matched on the head and tail of its message, which the prefilter has not seen as such."""
    by_index = {row[0]: row for row in rows}
    start = 0
    for i, raw in enumerate(lines):
        if len(raw) > MAX_MATCH_CHARS:
            by_index[i] = (i, start, -2, start + len(raw), set(everything))
        start += len(raw) + 1
    return [by_index[i] for i in sorted(by_index)]


class _Read(NamedTuple):
    """A block as read: its bytes, its lines (None: not split), the indices of its lines
    cut at MAX_LINE_BYTES."""

    block: bytes
    lines: list[bytes] | None
    cut: frozenset[int]


def count(matches: list[SignatureMatch], stats: ScanStats) -> None:
    """Count a matching line's findings and recoveries."""
    stats.matched_lines += 1
    for m in matches:
        if m.recovery:
            stats.recoveries += 1
        else:
            stats.findings += 1


def line_matches(blk: Block, row: Row, matcher: Matcher,
                 stats: ScanStats) -> list[SignatureMatch]:
    """What a candidate line of a block matches (marked truncated when it was cut)."""
    i, start, _message, end, candidates = row
    matches = match_raw_line(decode(blk.block[start:end], stats), matcher, candidates)
    if matches and i in blk.cut:
        matches = [_truncated(m) for m in matches]
    return matches


def scan_stream(stream: BinaryIO, matcher: Matcher, stats: ScanStats) -> Iterator[ScanHit]:
    """Every match in the stream, in line order; `stats` is filled in as it goes."""
    for blk in scan_blocks(stream, matcher, stats):
        for row in blk.rows:
            i = row[0]
            matches = line_matches(blk, row, matcher, stats)
            if matches:
                count(matches, stats)
                for m in matches:
                    yield _hit(blk.first + i + 1, m)
