"""The reporter's durable spool: every message for the coordinator is written here
first, and leaves only when the coordinator has answered it (`<state_dir>/spool/`).

- **Order and ids.** Messages keep the order they were put in. Each id is the spool's
  token (random, made when the spool was created) and a sequence number, so an id is
  never used twice by a host, even after the spool is wiped. The coordinator keeps
  each (host, id): a message sent again after a crash or a lost ack has no second
  effect (docs/protocol.md).
- **Durable.** `spool.jsonl` is appended to. A message of a DURABLE kind is fsync'd
  before `put` returns. `acked` holds the sequence number of the last answered message,
  written atomically. A crash mid-write leaves a torn last line, which the next start
  drops: `put` had not returned.
- **Bounded.** At most `max_messages` and `max_bytes` wait. When full, the oldest
  heartbeat goes first, then the oldest plan or verdict. A finding, a resolution, an
  outcome, a note or a page is never dropped: past the bound the spool grows for them.
  What was dropped is counted by kind (`dropped`) and reported in the next heartbeat.
- **Compaction.** The file is rewritten (temporary file, fsync, rename) when the
  answered lines outnumber the waiting ones, or when a message was dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.report.wire import MAX_LINE_BYTES, Message, encode

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.jsonl"
ACKED_FILE = "acked"
TOKEN_FILE = "token"  # noqa: S105 (the spool's id prefix, not a secret)
#: kinds fsync'd before `put` returns: what an operator must not lose to a crash, and a
#: lease given back (lost, it would hold a slot of its group until its TTL ran out)
DURABLE = frozenset({"finding", "resolved", "outcome", "note", "page", "verdict",
                     "lease-release"})
#: kinds dropped when the spool is full, in this order (the oldest of each first)
DROPPABLE = ("heartbeat", "plan", "verdict")


@dataclass(frozen=True)
class SpoolStats:
    depth: int
    bytes: int
    dropped: Mapping[str, int]
    last_acked: int


@dataclass
class _Entry:
    seq: int
    message: Message
    size: int


class Spool:
    """Messages waiting for the coordinator's answer, in order, on disk."""

    def __init__(self, directory: Path, *, max_messages: int = 10_000,
                 max_bytes: int = 16 << 20, fsync: bool = True) -> None:
        self._dir = directory
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._fsync = fsync
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token = self._token()
        self._acked = self._read_acked()
        self._waiting: deque[_Entry] = deque()
        self._bytes = 0
        self._answered_lines = 0
        self.dropped: Counter[str] = Counter()
        self._load()
        self._seq = max([self._acked] + [e.seq for e in self._waiting])
        self._file = (directory / SPOOL_FILE).open("ab")

    # ------------------------------------------------------------------ state on disk
    def _token(self) -> str:
        path = self._dir / TOKEN_FILE
        with contextlib.suppress(OSError):
            token = path.read_text("ascii").strip()
            if token.isalnum() and 0 < len(token) <= 16:
                return token
        token = os.urandom(4).hex()  # not `secrets`: it imports hashlib (OpenSSL)
        _write_atomically(path, token.encode())
        return token

    def _read_acked(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self._dir / ACKED_FILE).read_text("ascii").strip())
        return 0

    def _load(self) -> None:
        path = self._dir / SPOOL_FILE
        with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
            for raw in f:
                entry = _parse(raw)
                if entry is None:
                    log.warning("spool: a torn or unreadable line dropped (%d bytes)",
                                len(raw))
                    continue
                if entry.seq <= self._acked:
                    self._answered_lines += 1
                    continue
                self._waiting.append(entry)
                self._bytes += entry.size

    # ------------------------------------------------------------------ the interface
    def put(self, kind: str, fields: Mapping[str, Any]) -> str:
        """Write a message; its id. Raises OSError when the disk refuses it (the caller
        keeps the event in its audit log and says so)."""
        self._seq += 1
        msg = Message(kind, f"{self.token}-{self._seq}", dict(fields))
        line = _line(self._seq, msg)
        encoded = encode(msg)  # refuses a message over the wire's line limit
        self._make_room(len(encoded))
        self._file.write(line)
        self._file.flush()
        if self._fsync and kind in DURABLE:
            os.fsync(self._file.fileno())
        self._waiting.append(_Entry(self._seq, msg, len(encoded)))
        self._bytes += len(encoded)
        return msg.id

    def pending(self, limit: int) -> list[Message]:
        """The first `limit` messages waiting, in order."""
        return [e.message for _, e in zip(range(limit), self._waiting, strict=False)]

    def answered(self, msg_id: str) -> Message | None:
        """The coordinator answered `msg_id`, the first waiting message: it leaves, and is
        returned. None when `msg_id` is not the first waiting one (nothing changes)."""
        if not self._waiting or self._waiting[0].message.id != msg_id:
            return None
        entry = self._waiting.popleft()
        self._bytes -= entry.size
        self._acked = entry.seq
        self._answered_lines += 1
        _write_atomically(self._dir / ACKED_FILE, str(entry.seq).encode(), fsync=self._fsync)
        if self._answered_lines > max(len(self._waiting), 1000):
            self._compact()
        return entry.message

    def stats(self) -> SpoolStats:
        return SpoolStats(len(self._waiting), self._bytes, dict(self.dropped), self._acked)

    def close(self) -> None:
        self._file.close()

    # ------------------------------------------------------------------ bounds
    def _full(self, extra: int) -> bool:
        return (len(self._waiting) + 1 > self._max_messages
                or self._bytes + extra > self._max_bytes)

    def _make_room(self, extra: int) -> None:
        if not self._full(extra):
            return
        for kind in DROPPABLE:
            for entry in list(self._waiting):
                if not self._full(extra):
                    break
                if entry.message.type == kind:
                    self._waiting.remove(entry)
                    self._bytes -= entry.size
                    self.dropped[kind] += 1
        if self.dropped:
            log.warning("spool full (%d messages, %d bytes): dropped so far %s",
                        len(self._waiting), self._bytes, dict(self.dropped))
        self._compact()

    def _compact(self) -> None:
        """Rewrite the file with only the waiting messages."""
        self._file.close()
        data = b"".join(_line(e.seq, e.message) for e in self._waiting)
        _write_atomically(self._dir / SPOOL_FILE, data, fsync=self._fsync)
        self._answered_lines = 0
        self._file = (self._dir / SPOOL_FILE).open("ab")


def _line(seq: int, msg: Message) -> bytes:
    """A message as the spool file keeps it: its wire form and its sequence number."""
    return json.dumps({"seq": seq, **msg.as_dict()}, ensure_ascii=True, allow_nan=False,
                      separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _parse(raw: bytes) -> _Entry | None:
    if not raw.endswith(b"\n") or len(raw) > MAX_LINE_BYTES + 64:
        return None
    try:
        record = json.loads(raw)
        seq, kind, msg_id = record.pop("seq"), record.pop("type"), record.pop("id")
    except (ValueError, KeyError, AttributeError, TypeError):
        return None
    if not isinstance(seq, int) or not isinstance(kind, str) or not isinstance(msg_id, str):
        return None
    msg = Message(kind, msg_id, record)
    try:
        return _Entry(seq, msg, len(encode(msg)))
    except ValueError:
        return None


def _write_atomically(path: Path, data: bytes, *, fsync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    tmp.replace(path)
