"""The audit log: an append-only JSON-lines record of every finding, verdict, plan and
outcome the daemon produced (`<state_dir>/audit.jsonl`, docs/running.md).

Records are buffered in memory (bounded) and written once per loop turn; a batch that
holds a verdict or an outcome is fsync'd, because those are what an operator must be able
to reconstruct after a crash. The file is rotated by size (`audit.jsonl.1` … `.N`).

A write error (a full disk: ENOSPC) never raises into the loop: it is logged once per
failing stretch and counted; the records stay buffered and are written when the disk has
room again. A buffer that fills while the disk is fine is written at once; only when it
fills and cannot be written are the oldest records dropped -- counted by kind, logged,
and written into the log itself as a `note` record as soon as it can be.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 3
DEFAULT_BUFFER_RECORDS = 10_000
#: kinds whose records are fsync'd before the turn ends
DURABLE_KINDS = frozenset({"verdict", "outcome"})


@dataclass(frozen=True)
class AuditStats:
    written: int
    buffered: int
    dropped: int
    write_errors: int
    rotations: int
    last_error: str


class AuditLog:
    """Append-only JSON lines with a bounded in-memory buffer, size rotation and fsync."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        buffer_records: int = DEFAULT_BUFFER_RECORDS,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 1 or keep < 0 or buffer_records < 1:
            raise ValueError("max_bytes and buffer_records must be positive, keep >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.buffer_records = buffer_records
        self._wall = wall
        # (kind, encoded line); the head may be the unwritten rest of a line cut short
        self._pending: deque[tuple[str, bytes]] = deque()
        self._durable_pending = False
        self._head_partial = False
        self._dropped: Counter[str] = Counter()
        self._dropped_reason = ""
        self._fd = -1
        self._size = 0
        self._failing = False
        self.written = 0
        self.dropped_total = 0
        self.write_errors = 0
        self.rotations = 0
        self.last_error = ""

    # ------------------------------------------------------------------ appending
    def append(self, record: Mapping[str, Any]) -> None:
        """Queue one record (a dict with at least `kind`); written by the next flush()."""
        kind = str(record.get("kind", "?"))
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        self._pending.append((kind, (line + "\n").encode("utf-8", "replace")))
        if kind in DURABLE_KINDS:
            self._durable_pending = True
        self._bound()

    def _bound(self) -> None:
        """Past the buffer limit, write now (a burst -- a whole kernel ring after a reboot
        -- must not push out the records before it); only when that fails, drop the
        oldest whole records, counting them by kind."""
        if len(self._pending) > self.buffer_records and not self._failing:
            self.flush()
        while len(self._pending) > self.buffer_records:
            if self._head_partial:
                # never drop the rest of a half-written line: drop the one after it
                kind, _ = self._pending[1]
                del self._pending[1]
            else:
                kind, _ = self._pending.popleft()
            if not self._dropped:
                log.error("audit log: %d records buffered and none can be written (%s): "
                          "dropping the oldest, counted by kind", self.buffer_records,
                          self.last_error or "?")
            self._dropped[kind] += 1
            self.dropped_total += 1
            self._dropped_reason = self.last_error or "buffer full"

    # ------------------------------------------------------------------ writing
    def flush(self) -> bool:
        """Write every buffered record; True when nothing is left buffered. Never raises."""
        if not self._pending and not self._dropped:
            return True
        try:
            self._ensure_open()
            if self._dropped and not self._head_partial:
                self._write_drop_note()
            while self._pending:
                self._write_some()
            if self._durable_pending:
                os.fsync(self._fd)
                self._durable_pending = False
        except OSError as exc:
            self._on_error(exc)
            return False
        if self._failing:
            log.warning("audit log %s is writable again", self.path)
        self._failing = False
        return True

    def _write_drop_note(self) -> None:
        """Say in the log itself what was dropped; the counters clear once it is written."""
        line = self._drop_note()
        n = os.write(self._fd, line)
        self._size += n
        if n < len(line):
            self._pending.appendleft(("note", line[n:]))
            self._head_partial = True
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self._dropped.items()))
        log.error("audit log: dropped %d record(s) (%s) while %s",
                  sum(self._dropped.values()), counts, self._dropped_reason)
        self._dropped.clear()

    def _write_some(self) -> None:
        """Write a batch of whole lines (rotating first when it would pass max_bytes)."""
        batch: list[bytes] = []
        size = 0
        for _, line in self._pending:
            batch.append(line)
            size += len(line)
            if size >= 256 * 1024:
                break
        if self._size > 0 and self._size + size > self.max_bytes and not self._head_partial:
            self._rotate()
        data = b"".join(batch)
        n = os.write(self._fd, data)
        self._size += n
        self._consume(n)

    def _consume(self, n: int) -> None:
        while n > 0 and self._pending:
            kind, line = self._pending[0]
            if n >= len(line):
                self._pending.popleft()
                n -= len(line)
                self.written += 1
                self._head_partial = False
            else:
                self._pending[0] = (kind, line[n:])
                self._head_partial = True
                n = 0

    def _drop_note(self) -> bytes:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self._dropped.items()))
        total = sum(self._dropped.values())
        note = {
            "t": self._wall(),
            "kind": "note",
            "text": f"audit log dropped {total} record(s) ({counts}): {self._dropped_reason}",
            "dropped": dict(self._dropped),
        }
        return (json.dumps(note, separators=(",", ":")) + "\n").encode()

    def _on_error(self, exc: OSError) -> None:
        self.write_errors += 1
        reason = exc.strerror or str(exc)
        self.last_error = f"cannot write {self.path}: {reason}"
        if not self._failing:
            log.error(
                "audit log: %s; keeping up to %d records in memory (%d now)%s",
                self.last_error, self.buffer_records, len(self._pending),
                " -- disk full" if exc.errno == errno.ENOSPC else "",
            )
        self._failing = True
        self._close_fd()  # reopen next time: the file may have been replaced

    # ------------------------------------------------------------------ file
    def _ensure_open(self) -> None:
        if self._fd >= 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        """audit.jsonl -> .1 -> .2 ... -> .keep (the oldest is removed)."""
        self._close_fd()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.keep, 0, -1):
                src = self.path if i == 1 else self._numbered(i - 1)
                if src.exists():
                    src.replace(self._numbered(i))
        self.rotations += 1
        self._ensure_open()

    def _numbered(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    # ------------------------------------------------------------------ end
    def stats(self) -> AuditStats:
        return AuditStats(self.written, len(self._pending), self.dropped_total,
                          self.write_errors, self.rotations, self.last_error)

    def close(self) -> None:
        """Flush what can be flushed; say exactly what could not be written."""
        if not self.flush():
            left = Counter(kind for kind, _ in self._pending)
            left.update(self._dropped)
            log.error(
                "audit log: %d record(s) not written at exit (%s): %s",
                sum(left.values()), ", ".join(f"{k} {v}" for k, v in sorted(left.items())),
                self.last_error,
            )
        self._close_fd()
