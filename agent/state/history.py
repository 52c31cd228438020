"""The action history: an append-only journal of executions and fixes (`history.jsonl`).

One JSON object per line, appended with O_APPEND and fsync'd under `flock`, so the daemon
and an operator's `remediate --execute` never lose each other's entries, and one entry
costs one small write however long the history is:

    {"kind": "execution", "action": "restart-service", "subject": "dovecot",
     "target": "dovecot.service", "t": 1790000000.0, "problem": "oom-kill",
     "finding_subject": "dovecot.service", "origin": "policy"}
    {"kind": "fix", "problem": "oom-kill", "subject": "dovecot.service",
     "target": "dovecot.service", "t": 1790000120.0, "action": "restart-service"}

A line that cannot be read (a torn write, an edit, a disk error) is skipped and reported:
every other entry is kept (budgets still count what they can), the bad lines are copied
to `history.jsonl.corrupt-<time>` for an operator, and the caller marks the history
faulted (agent/state/store.py: disruptive and budgeted actions are denied until an
operator clears it). The journal is compacted (rewritten atomically without entries
older than `retain_s`) when it is loaded and every COMPACT_EVERY appends.

A `history.json` of the earlier format (one JSON object, rewritten on every entry) is
read once and converted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.state.files import StateError, read_json, write_text_atomic

JOURNAL = "history.jsonl"
LEGACY = "history.json"
#: taken (flock) around every append and every compaction
LOCK = "history.lock"
#: history older than this is dropped when compacting (longer than any sane budget window)
DEFAULT_RETAIN_S = 8 * 86400.0
#: compact after this many appends by this process (and at every load)
COMPACT_EVERY = 1000
#: one line is never longer than this (a longer one is a corrupt line)
MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Execution:
    """An action that was handed to the real runner (not a dry run)."""

    action: str
    subject: str
    t: float
    problem: str = ""
    finding_subject: str = ""
    origin: str = "policy"
    #: the canonical thing acted on ("dovecot.service" for subject "dovecot")
    target: str = ""

    def __post_init__(self) -> None:
        if not self.target:
            object.__setattr__(self, "target", self.subject)


@dataclass(frozen=True)
class Fix:
    """A finding resolved after an action ran for it: a "successful" fix (for flapping)."""

    problem: str
    subject: str
    t: float
    action: str = ""
    target: str = ""

    def __post_init__(self) -> None:
        if not self.target:
            object.__setattr__(self, "target", self.subject)


Entry = Execution | Fix


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


class BadEntry(ValueError):
    """A journal line that is not an entry."""


def _text(d: dict[str, Any], name: str, required: bool = False) -> str:
    value = d.get(name, None if required else "")
    if not isinstance(value, str):
        raise BadEntry(f"{name} must be a string")
    return value


def parse_entry(d: Any) -> Entry:
    """One journal object as an Execution or a Fix; ValueError says what is wrong."""
    if not isinstance(d, dict):
        raise BadEntry("not an object")
    if not _finite(d.get("t")):
        raise BadEntry("t must be a finite number")
    kind = d.get("kind")
    if kind == "execution":
        return Execution(
            action=_text(d, "action", True), subject=_text(d, "subject", True),
            t=float(d["t"]), problem=_text(d, "problem"),
            finding_subject=_text(d, "finding_subject"), origin=_text(d, "origin") or "policy",
            target=_text(d, "target"),
        )
    if kind == "fix":
        return Fix(problem=_text(d, "problem", True), subject=_text(d, "subject", True),
                   t=float(d["t"]), action=_text(d, "action"), target=_text(d, "target"))
    raise BadEntry(f"unknown kind {kind!r}")


def to_line(entry: Entry) -> bytes:
    kind = "execution" if isinstance(entry, Execution) else "fix"
    return (json.dumps({"kind": kind, **asdict(entry)}, sort_keys=True) + "\n").encode()


def _parse_line(raw: bytes) -> Entry:
    if len(raw) > MAX_LINE:
        raise BadEntry(f"longer than {MAX_LINE} bytes")
    return parse_entry(json.loads(raw.decode("utf-8")))


@dataclass(frozen=True)
class Loaded:
    """What a read of the journal found: the good entries and a sentence per bad line."""

    entries: tuple[Entry, ...]
    bad: tuple[str, ...]
    bad_lines: tuple[bytes, ...]


def parse_journal(data: bytes, first_line: int = 1) -> Loaded:
    entries: list[Entry] = []
    bad: list[str] = []
    bad_lines: list[bytes] = []
    for n, raw in enumerate(data.split(b"\n"), first_line):
        if not raw.strip():
            continue
        try:
            entries.append(_parse_line(raw))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            bad.append(f"line {n}: {str(exc)[:120]}")
            bad_lines.append(raw[:MAX_LINE])
    return Loaded(tuple(entries), tuple(bad), tuple(bad_lines))


class Journal:
    """The history journal in `directory`. Not thread-safe; one per SafetyState."""

    def __init__(self, directory: Path, retain_s: float = DEFAULT_RETAIN_S) -> None:
        self.directory = directory
        self.path = directory / JOURNAL
        self.retain_s = retain_s
        self.entries: list[Entry] = []
        #: sentences about lines that could not be read (since this process started)
        self.bad: list[str] = []
        self._offset = 0
        self._ident: tuple[int, int] | None = None
        self._appended = 0
        self._line_no = 0

    # ------------------------------------------------------------------ reading
    def _stat(self) -> os.stat_result | None:
        try:
            return self.path.stat()
        except OSError:
            return None

    def changed(self) -> bool:
        """Another process appended or rewrote the journal since we last read it."""
        st = self._stat()
        if st is None:
            return self._ident is not None
        return (st.st_dev, st.st_ino) != self._ident or st.st_size != self._offset

    def load(self, now: float) -> list[str]:
        """Read what is new (all of it after a rewrite); returns sentences about bad lines
        found in this read (also kept aside next to the journal)."""
        st = self._stat()
        if st is None:
            self.entries, self._offset, self._ident, self._line_no = [], 0, None, 0
            return []
        ident = (st.st_dev, st.st_ino)
        start = self._offset if ident == self._ident and st.st_size >= self._offset else 0
        try:
            with self.path.open("rb") as f:
                f.seek(start)
                data = f.read()
        except OSError as exc:
            return [f"cannot read {self.path}: {exc.strerror or exc}"]
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        if start == 0:
            self.entries, self._line_no = [], 0
        loaded = parse_journal(data[:end], self._line_no + 1)
        self._line_no += data[:end].count(b"\n")
        self.entries += loaded.entries
        self._offset, self._ident = start + end, ident
        if loaded.bad:
            self._keep_aside(loaded.bad_lines, now)
            self.bad += loaded.bad
        return [f"{self.path} {b}" for b in loaded.bad]

    def _keep_aside(self, lines: tuple[bytes, ...], now: float) -> None:
        aside = self.directory / f"{JOURNAL}.corrupt-{int(now)}"
        with contextlib.suppress(OSError), aside.open("ab") as f:
            f.write(b"\n".join(lines) + b"\n")

    def load_legacy(self, now: float) -> list[str]:
        """Convert a history.json of the earlier format (once); sentences on problems."""
        legacy = self.directory / LEGACY
        if not legacy.exists() or self.path.exists():
            return []
        loaded = read_json(legacy, now)  # a corrupt file is moved aside and reported
        problems = [loaded.problem] if loaded.problem else []
        entries: list[Entry] = []
        data = loaded.data or {}
        for kind, items in (("execution", data.get("executions")), ("fix", data.get("fixes"))):
            for i, item in enumerate(items if isinstance(items, list) else []):
                try:
                    entries.append(parse_entry({"kind": kind, **item}
                                               if isinstance(item, dict) else item))
                except ValueError as exc:
                    problems.append(f"{legacy} {kind} {i}: {exc}")
        if loaded.data is not None and not all(isinstance(data.get(k), list)
                                               for k in ("executions", "fixes")):
            problems.append(f"{legacy} has no executions/fixes lists")
        self._rewrite(sorted(entries, key=lambda e: e.t), now)
        with contextlib.suppress(OSError):
            legacy.replace(legacy.with_name(f"{LEGACY}.converted-{int(now)}"))
        return problems

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def locked(self, now: float) -> Iterator[list[str]]:
        """Hold the lock, with what other processes appended read in first; yields the
        sentences about bad lines that read found."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot lock {self.directory / LOCK}: "
                             f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load(now) if self.changed() else []
        finally:
            os.close(fd)

    def append(self, entry: Entry, now: float) -> list[str]:
        """Append one entry durably (call inside `locked`); StateError if it cannot be
        written, and then memory is unchanged."""
        line = to_line(entry)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(28, "No space left on device (short write)")
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._ident = None  # a partial line may be on disk: read it all next time
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc} "
                             "(the previous state is kept)") from exc
        self.entries.append(entry)
        self._ident, self._offset = (st.st_dev, st.st_ino), st.st_size
        self._line_no += 1
        self._appended += 1
        if self._appended >= COMPACT_EVERY:
            return self.compact(now)
        return []

    def compact(self, now: float) -> list[str]:
        """Rewrite without expired entries (call inside `locked`); sentences on failure."""
        self._appended = 0
        horizon = now - self.retain_s
        keep = [e for e in self.entries if e.t >= horizon]
        if len(keep) == len(self.entries) and not self.bad:
            return []
        self.bad.clear()  # they are kept aside; the journal no longer holds them
        try:
            self._rewrite(keep, now)
        except StateError as exc:
            return [str(exc)]
        return []

    def _rewrite(self, entries: list[Entry], now: float) -> None:
        write_text_atomic(self.path, b"".join(to_line(e) for e in entries))
        st = self.path.stat()
        self.entries = list(entries)
        self._ident, self._offset = (st.st_dev, st.st_ino), st.st_size
        self._line_no = len(entries)
