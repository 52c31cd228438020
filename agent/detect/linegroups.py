"""A block's candidate lines, those of the same repeated message together.

A kernel log repeats itself: the same message comes back with only its dmesg timestamp
changed (a server not responding, a link flapping, a disk's errors). What scan prints
for a line is its number and a part that depends only on what matched and on the
line's text, source, facility and truncation. For a line whose candidates are all
kernel signatures and whose form is a plain message or a `[  sec.frac] ` dmesg stamp,
those are all given by the message's bytes: such lines, of valid UTF-8 without NUL and
short enough never to be windowed or cut, are grouped by message (and candidates), and
scan matches each group once (agent/detect/scanrender.py).

The C scanner groups in C (agent/detect/_hsblock.c, `BlockHits.grouped`); this is the
same grouping in Python, for the portable engine and for blocks with long or odd lines.
tests/unit/test_hsblock.py holds the two to the same output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence, Set

from agent.sources.lineformat import FAST_STAMP_PATTERN, may_have_prefix

#: a candidate line of a block: (index, start, message start, end, signature indices),
#: its bytes `block[start:end]`; message start is where its message begins (after a dmesg
#: stamp, or at start for a plain line), -1 for another form, -2 when not worked out
Row = tuple[int, int, int, int, Set[int]]
#: a group: (message, candidates, how many lines, first line's index, start, end)
Group = tuple[bytes, Set[int], int, int, int, int]
#: (groups, every candidate line's index in order, each one's group or -1, the rows of
#: those of -1 by index)
Grouped = tuple[list[Group], list[int], list[int], dict[int, Row]]

#: `[  123.456789] `: lineformat's fast dmesg form (the `]` within the first 24 bytes),
#: and the space after it
_STAMP = re.compile(FAST_STAMP_PATTERN.encode("ascii"))


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


def plain_first_bytes() -> bytes:
    """The first bytes of a line that is a plain message (what the C scanner is told)."""
    return bytes(b for b in range(256) if b != ord("[") and message_start(bytes((b,))) == 0)


def start_of(data: bytes, s: int, e: int) -> int:
    """message_start of the line data[s:e], as an offset in data (-1: another form)."""
    m = _STAMP.match(data, s, e)  # the common form, without a call to message_start
    if m is not None:
        return m.end()
    at = message_start(data[s:e])
    return at if at < 0 else s + at


def clean(raw: bytes) -> bool:
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


def group_rows(data: bytes, rows: Sequence[Row], limit: int, kernel: Set[int]) -> Grouped:
    """The rows of a block grouped: a line of at most `limit` bytes with a message
    start, candidates all in `kernel` and a clean message joins the group of its
    message and candidates; any other is on its own (-1)."""
    heads: list[tuple[bytes, Set[int], int, int, int]] = []
    sizes: list[int] = []
    index: dict[tuple[bytes, frozenset[int]], int] = {}
    numbers: list[int] = []
    group_of: list[int] = []
    singles: dict[int, Row] = {}
    for i, s, k, e, cands in rows:
        if k < -1:
            k = start_of(data, s, e)
        g = -1
        if k >= 0 and e - s <= limit:
            key = data[k:e]
            ident = (key, frozenset(cands))
            found = index.get(ident)
            if found is None:
                found = -1
                if cands <= kernel and clean(key):
                    found = len(heads)
                    heads.append((key, cands, i, s, e))
                    sizes.append(0)
                index[ident] = found
            g = found
            if g >= 0:
                sizes[g] += 1
        numbers.append(i)
        group_of.append(g)
        if g < 0:
            singles[i] = (i, s, k, e, cands)
    groups = [(key, cands, size, i, s, e)
              for (key, cands, i, s, e), size in zip(heads, sizes, strict=True)]
    return groups, numbers, group_of, singles
