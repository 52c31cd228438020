"""Follow a log file like `tail -F` (docs/architecture.md "Sources").

Survives rotation by rename (finish the old file, then open the new one), copytruncate
(size below our offset: start again at 0), partial lines (buffered until the newline),
invalid UTF-8 (U+FFFD) and over-long lines (cut at `max_line_bytes`: the head and the end
of the line are kept around a marker; the middle is skipped as it streams by, so memory
stays bounded). A missing file
is waited for, not an error. Nothing is persisted: after an agent restart a follower
starts at the end of the file (log signatures are about what is happening now).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.clock import Clock
from agent.model import LogLine

DEFAULT_MAX_BYTES_PER_POLL = 1 << 20
CHUNK = 64 * 1024


#: the most of an over-long line's end that is kept (a quarter of the cap at most)
TAIL_BYTES = 4096


def truncation_marker(dropped: int) -> str:
    """What stands between the head and the tail of an over-long line."""
    return f" …[truncated {dropped} bytes]… "


@dataclass(frozen=True)
class LogFileStats:
    path: str
    open: bool
    offset: int
    rotations: int
    truncations: int
    truncated_lines: int
    error: str


class _LineSplitter:
    """Splits a byte stream into lines, keeping at most `cap` bytes of any one line.

    An over-long line keeps its head and its last `tail_cap` bytes: the real end of the
    line, where a service logs the fixed fields that follow a client-supplied one
    (dovecot's `rip=` after `user=<...>`), so a client cannot push them out of view."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.tail_cap = min(TAIL_BYTES, cap // 4)
        self.head_cap = cap - self.tail_cap
        self._buf = bytearray()
        self._tail = bytearray()
        self._over = False
        self._dropped = 0

    @property
    def pending(self) -> bool:
        return bool(self._buf) or self._over

    def feed(self, chunk: bytes) -> list[tuple[bytes, int, bytes]]:
        """Return complete lines as (head, bytes dropped, tail)."""
        out: list[tuple[bytes, int, bytes]] = []
        pos = 0
        end = len(chunk)
        while pos < end:
            nl = chunk.find(b"\n", pos)
            stop = end if nl < 0 else nl
            self._take(chunk, pos, stop)
            if nl < 0:
                break
            out.append(self.flush_line())
            pos = nl + 1
        return out

    def _take(self, chunk: bytes, start: int, stop: int) -> None:
        if not self._over:
            if stop - start <= self.cap - len(self._buf):
                self._buf += chunk[start:stop]
                return
            self._over = True
            rest = bytes(self._buf[self.head_cap:]) + chunk[start:stop]
            del self._buf[self.head_cap:]
            room = self.head_cap - len(self._buf)
            if room > 0:
                self._buf += rest[:room]
                rest = rest[room:]
            self._tail += rest
        else:
            self._tail += chunk[start:stop]
        excess = len(self._tail) - self.tail_cap
        if excess > 0:
            self._dropped += excess
            del self._tail[:excess]

    def flush_line(self) -> tuple[bytes, int, bytes]:
        line, dropped, tail = bytes(self._buf), self._dropped, bytes(self._tail)
        self._buf.clear()
        self._tail.clear()
        self._over = False
        self._dropped = 0
        return line, dropped, tail


class LogFileFollower:
    """Follows one file; `poll()` returns the complete lines written since the last call."""

    def __init__(
        self,
        name: str,
        path: Path,
        max_line_bytes: int,
        clock: Clock,
        *,
        from_start: bool = False,
        max_bytes_per_poll: int = DEFAULT_MAX_BYTES_PER_POLL,
    ) -> None:
        if max_line_bytes < 1 or max_bytes_per_poll < 1:
            raise ValueError("max_line_bytes and max_bytes_per_poll must be positive")
        self.name = name
        self.source = f"log:{name}"
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.max_bytes_per_poll = max_bytes_per_poll
        self._clock = clock
        self._split = _LineSplitter(max_line_bytes)
        self._fd = -1
        self._ident: tuple[int, int] | None = None
        self._offset = 0
        self.rotations = 0
        self.truncations = 0
        self.truncated_lines = 0
        self.error = ""
        # A file present at start-up is followed from its end (unless from_start);
        # a file that appears later, or after rotation, is read from its beginning.
        self._open(at_end=not from_start)

    def stats(self) -> LogFileStats:
        return LogFileStats(
            str(self.path), self._fd >= 0, self._offset, self.rotations,
            self.truncations, self.truncated_lines, self.error,
        )

    def poll(self) -> list[LogLine]:
        """Read at most `max_bytes_per_poll` bytes; return the lines they complete."""
        out: list[LogLine] = []
        if self._fd < 0 and not self._open(at_end=False):
            return out
        budget = self.max_bytes_per_poll
        while budget > 0:
            chunk = self._read(min(CHUNK, budget))
            if chunk is None:
                break
            if chunk:
                budget -= len(chunk)
                self._emit(self._split.feed(chunk), out)
                continue
            # At the end of the current file: has it been truncated or replaced?
            if self._check_truncated():
                self._emit_pending(out)
                continue
            if self._check_rotated():
                self._emit_pending(out)
                self._close()
                self.rotations += 1
                if self._open(at_end=False):
                    continue
            break
        return out

    # ------------------------------------------------------------------ file handling
    def _open(self, *, at_end: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self.error = ""
            return False
        except OSError as e:
            self.error = f"cannot open {self.path}: {e.strerror}"
            return False
        try:
            st = os.fstat(fd)
            self._offset = os.lseek(fd, 0, os.SEEK_END) if at_end else 0
        except OSError as e:
            os.close(fd)
            self.error = f"cannot read {self.path}: {e.strerror}"
            return False
        self._fd, self._ident, self.error = fd, (st.st_dev, st.st_ino), ""
        return True

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ident, self._offset = -1, None, 0

    def close(self) -> None:
        self._close()

    def _read(self, n: int) -> bytes | None:
        try:
            data = os.pread(self._fd, n, self._offset)
        except OSError as e:
            self.error = f"cannot read {self.path}: {e.strerror}"
            return None
        self._offset += len(data)
        return data

    def _check_truncated(self) -> bool:
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            return False
        if size >= self._offset:
            return False
        self.truncations += 1
        self._offset = 0
        return True

    def _check_rotated(self) -> bool:
        """True when the path now names another file (the old one is read to its end)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False  # renamed away, successor not there yet: keep the old one
        except OSError:
            return False
        return (st.st_dev, st.st_ino) != self._ident

    # ------------------------------------------------------------------ lines
    def _emit_pending(self, out: list[LogLine]) -> None:
        """The last line of a file that was replaced or truncated had no newline."""
        if self._split.pending:
            self._emit([self._split.flush_line()], out)

    def _emit(self, lines: list[tuple[bytes, int, bytes]], out: list[LogLine]) -> None:
        if not lines:
            return
        now = self._clock.now()
        for raw, dropped, tail in lines:
            if tail:
                tail = tail.removesuffix(b"\r")
            elif raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw and not dropped:
                continue  # blank lines carry nothing to match
            text = raw.decode("utf-8", "replace")
            if dropped:
                self.truncated_lines += 1
                text += truncation_marker(dropped) + tail.decode("utf-8", "replace")
            out.append(LogLine(source=self.source, text=text, t=now, truncated=dropped > 0))
