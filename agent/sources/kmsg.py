"""Follow the kernel log through /dev/kmsg (docs/architecture.md "Sources").

Each read() of /dev/kmsg returns exactly one record::

    prio,seq,usec,flags[,more...];text\\n
     KEY=value\\n            (zero or more continuation lines)

The facility (prio >> 3) travels with every LogLine: 0 is the kernel itself, anything
else was written from userspace and is never trusted to trigger an action.

Position: the follower remembers (boot id, last seq) in a small JSON file. After an agent
restart it resumes after the last seq; after a reboot (boot id changed) or without state
it reads the whole ring once, because the last words before a crash matter most.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from agent.boot import BOOT_ID_PATH, read_boot_id
from agent.clock import Clock
from agent.model import EMPTY, LogLine
from agent.sources.lineformat import unescape
from agent.state.files import StateError, write_json_atomic

DEFAULT_DEVICE = Path("/dev/kmsg")
#: the kernel answers EINVAL to a read buffer smaller than one record (records reach
#: CONSOLE_EXT_LOG_MAX = 8192 bytes); twice that leaves room.
READ_SIZE = 16384
SOURCE = "kmsg"

class KmsgParseError(ValueError):
    """A record that does not follow the /dev/kmsg format."""


# --------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class KmsgHeader:
    """The numbers before the `;` of a record."""

    priority: int
    facility: int
    seq: int
    usec: int
    flags: str


def parse_header(head: bytes) -> KmsgHeader:
    """Parse `prio,seq,usec,flags[,...]`; raise KmsgParseError when it is not that."""
    parts = head.split(b",", 4)
    if len(parts) < 3:
        raise KmsgParseError(f"kmsg header needs prio,seq,usec: {head[:60]!r}")
    try:
        prio, seq, usec = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        raise KmsgParseError(f"kmsg header fields are not numbers: {head[:60]!r}") from None
    if prio < 0 or seq < 0 or usec < 0:
        raise KmsgParseError(f"kmsg header has a negative number: {head[:60]!r}")
    flags = parts[3].decode("ascii", "replace") if len(parts) > 3 else "-"
    return KmsgHeader(priority=prio & 7, facility=prio >> 3, seq=seq, usec=usec, flags=flags)


def parse_record(raw: bytes, t: float = 0.0) -> LogLine:
    """Parse one /dev/kmsg record into a LogLine (source "kmsg").

    `t` is the wall-clock time the record was read (the record itself carries only
    the monotonic `usec` since boot). Raises KmsgParseError for a malformed record.
    """
    head, sep, rest = raw.partition(b";")
    if not sep:
        raise KmsgParseError(f"kmsg record has no ';': {raw[:60]!r}")
    h = parse_header(head)
    text_b, _, cont = rest.partition(b"\n")
    fields: Mapping[str, str] = EMPTY
    if cont:
        found: dict[str, str] = {}
        for line in cont.split(b"\n"):
            if not line.startswith(b" "):
                continue  # the trailing "" after the last newline, or junk
            key, eq, value = line[1:].partition(b"=")
            if eq and key:
                found[key.decode("ascii", "replace")] = unescape(value)
        if found:
            fields = MappingProxyType(found)
    return LogLine(
        source=SOURCE,
        text=unescape(text_b),
        t=t,
        facility=h.facility,
        priority=h.priority,
        seq=h.seq,
        monotonic_usec=h.usec,
        fields=fields,
    )


# --------------------------------------------------------------------------- device
class KmsgDevice(Protocol):
    """What the follower needs from /dev/kmsg; tests hand in a scripted stand-in."""

    def fileno(self) -> int: ...

    def read_record(self) -> bytes | None:
        """One record, or None when none is available now (EAGAIN).

        Raises BrokenPipeError when records were overwritten before they were read.
        """

    def seek_start(self) -> None:
        """Position at the oldest record still in the ring."""

    def close(self) -> None: ...


class DevKmsg:
    """/dev/kmsg opened O_RDONLY|O_NONBLOCK, for the agent's selectors loop."""

    def __init__(self, path: Path = DEFAULT_DEVICE) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def read_record(self) -> bytes | None:
        try:
            return os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise BrokenPipeError(errno.EPIPE, "kmsg records overwritten") from e
            raise

    def seek_start(self) -> None:
        # SEEK_SET 0 = oldest record in the ring; SEEK_DATA = after the last "dmesg -C";
        # SEEK_END = only new records.
        os.lseek(self._fd, 0, os.SEEK_SET)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --------------------------------------------------------------------------- position
@dataclass(frozen=True)
class KmsgPosition:
    boot_id: str
    seq: int


def load_position(path: Path) -> KmsgPosition | None:
    """The saved position, or None when there is none or it is unreadable.

    A damaged state file is not fatal: reading the whole ring again re-delivers some
    records, which is better than refusing to follow the kernel log.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    boot_id, seq = data.get("boot_id"), data.get("seq")
    if not isinstance(boot_id, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return KmsgPosition(boot_id=boot_id, seq=seq)


def save_position(path: Path, pos: KmsgPosition) -> None:
    """Write atomically and durably (agent.state.files); StateError if it cannot."""
    write_json_atomic(path, {"boot_id": pos.boot_id, "seq": pos.seq})


# --------------------------------------------------------------------------- follower
@dataclass(frozen=True)
class KmsgStats:
    """Counters for status and reports."""

    lost: int
    overruns: int
    bad_records: int
    read_errors: int
    last_seq: int | None
    resumed: bool


class KmsgFollower:
    """Reads every record /dev/kmsg has now, and remembers where it stopped.

    Delivery is at-least-once: the position saved is that of records handed out by
    an *earlier* `read_available()` call (the single-threaded loop has processed them
    by the time it asks again), so a crash re-delivers at most the last batch plus
    `save_interval_s` of records, and never skips one.
    """

    def __init__(
        self,
        state_path: Path,
        clock: Clock,
        *,
        device_path: Path = DEFAULT_DEVICE,
        boot_id_path: Path = BOOT_ID_PATH,
        opener: Callable[[Path], KmsgDevice] = DevKmsg,
        save_interval_s: float = 1.0,
        max_records_per_call: int = 10_000,
    ) -> None:
        self._state_path = state_path
        self._clock = clock
        self._save_interval_s = save_interval_s
        self._max_records = max_records_per_call
        self.boot_id = read_boot_id(boot_id_path)
        saved = load_position(state_path)
        #: True when this boot's position was found: records up to it are skipped
        self.resumed = saved is not None and saved.boot_id == self.boot_id
        self._skip_through = saved.seq if saved is not None and self.resumed else -1
        self._last_seq: int | None = self._skip_through if self.resumed else None
        self._saved_seq: int | None = self._last_seq
        self._last_save = clock.monotonic()
        self._overrun_pending = False
        self.lost = 0
        self.overruns = 0
        self.save_errors = 0
        self.bad_records = 0
        self.read_errors = 0
        self.last_error = ""
        self._dev = opener(device_path)
        self._dev.seek_start()

    # the selectors loop registers this fd for EVENT_READ
    def fileno(self) -> int:
        return self._dev.fileno()

    @property
    def last_seq(self) -> int | None:
        return self._last_seq

    def stats(self) -> KmsgStats:
        return KmsgStats(
            self.lost, self.overruns, self.bad_records, self.read_errors, self._last_seq,
            self.resumed,
        )

    def read_available(self) -> list[LogLine]:
        """Every record available now (up to max_records_per_call), oldest first."""
        self._maybe_save()
        out: list[LogLine] = []
        while len(out) < self._max_records:
            try:
                raw = self._dev.read_record()
            except BrokenPipeError:
                # The reader fell behind the ring: the kernel moved us to the oldest
                # record left. The seq gap on the next record tells how many were lost.
                self.overruns += 1
                self._overrun_pending = True
                continue
            except OSError as e:
                # e.g. EINVAL for a record larger than READ_SIZE (cannot happen with
                # today's 8 KiB record cap): report it, keep the loop alive, retry later.
                self.read_errors += 1
                self.last_error = f"read {e.strerror or e}"
                break
            if raw is None:
                break
            try:
                line = parse_record(raw, self._record_time(raw))
            except KmsgParseError:
                self.bad_records += 1
                continue
            seq = line.seq
            assert seq is not None  # parse_record always sets it
            if seq <= self._skip_through:
                # Delivered before this follower started. An overrun that lands here
                # overwrote only records already delivered: nothing was lost.
                self._overrun_pending = False
                continue
            self._count_gap(seq)
            self._last_seq = seq
            out.append(line)
        return out

    def _record_time(self, raw: bytes) -> float:
        """When the kernel printed the record, on the wall clock: now, less how long ago
        it was printed (its usec since boot against the monotonic clock, which counts
        from boot too). Records read from the ring at start-up keep their own time, so a
        kill printed an hour ago is an hour old (and quiet), not news."""
        now = self._clock.now()
        head = raw.split(b";", 1)[0].split(b",")
        try:
            usec = int(head[2])
        except (IndexError, ValueError):
            return now
        return now - max(0.0, self._clock.monotonic() - usec / 1e6)

    def _count_gap(self, seq: int) -> None:
        prev = self._last_seq
        gap = seq - prev - 1 if prev is not None else 0
        if gap > 0:
            self.lost += gap
        elif self._overrun_pending:
            self.lost += 1  # EPIPE with no previous seq to measure by: at least one
        self._overrun_pending = False

    def _maybe_save(self) -> None:
        if self._last_seq == self._saved_seq:
            return
        if self._clock.monotonic() - self._last_save < self._save_interval_s:
            return
        self.save()

    def save(self) -> None:
        """Persist the position of every record handed out so far (cheap when unchanged)."""
        if self._last_seq is None or self._last_seq == self._saved_seq:
            return
        try:
            save_position(self._state_path, KmsgPosition(self.boot_id, self._last_seq))
        except StateError as exc:
            # A full disk must not stop the kernel log: the old position stays on disk,
            # so at worst records are delivered twice after a restart (at least once).
            self.save_errors += 1
            self.last_error = str(exc)
            self._last_save = self._clock.monotonic()
            return
        self._saved_seq = self._last_seq
        self._last_save = self._clock.monotonic()

    def close(self, *, save: bool = True) -> None:
        if save:
            self.save()
        self._dev.close()

    def __enter__(self) -> KmsgFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
