"""The agent's safety state under the state directory, one JSON file per concern.

    history.json        executions and successful fixes (budget, cooldown, flapping)
    history.fault.json  present while the history is known to be broken (see below)
    approvals.json      operator approvals (`nodewarden approve`), each with an expiry
    maintenance.json    the maintenance flag (`nodewarden maintenance on --for 2h`)
    ladders.json        ladder positions of the policy (opaque to this module)

`SafetyState(directory)` reads every file once; each change is written through at once
(atomically, agent/state/files.py) and a write that fails raises StateError and leaves the
in-memory state as it was, so memory and disk never disagree.

Corrupt files. Approvals, maintenance and ladders are reported (`problems`) and start
clean: losing them is safe (an approval is asked again, a ladder starts from its first
rung). The history must never be silently reset — that would re-open the node-restart
budget and allow a reboot loop (DESIGN safety property 3). So a corrupt history is kept
aside, a fault marker `history.fault.json` is written (it survives restarts), and
`history_fault` is set: the budget guard then denies every disruptive action with that
reason until an operator clears it with `clear_history_fault()` (the CLI:
`nodewarden maintenance clear-history`). A new history is recorded meanwhile.

All times are wall-clock seconds passed in by the caller (Clock.now()): they must mean the
same thing after a reboot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.state.files import StateError, read_json, write_json_atomic

HISTORY = "history.json"
HISTORY_FAULT = "history.fault.json"
#: taken (flock) around every read-modify-write of the history: the daemon and an
#: operator's `remediate --execute` append to the same file
HISTORY_LOCK = "history.lock"
APPROVALS = "approvals.json"
MAINTENANCE = "maintenance.json"
LADDERS = "ladders.json"

#: history older than this is dropped when writing (longer than any sane budget window)
DEFAULT_RETAIN_S = 8 * 86400.0
#: and at most this many entries are kept
MAX_ENTRIES = 20000


@dataclass(frozen=True)
class Execution:
    """An action that was handed to the real runner (not a dry run)."""

    action: str
    subject: str
    t: float
    problem: str = ""
    finding_subject: str = ""
    origin: str = "policy"


@dataclass(frozen=True)
class Fix:
    """A finding resolved after an action ran for it: a "successful" fix (for flapping)."""

    problem: str
    subject: str
    t: float
    action: str = ""


@dataclass(frozen=True)
class Approval:
    action: str
    subject: str
    granted_at: float
    expires_at: float
    by: str = ""
    reason: str = ""

    def covers(self, action: str, subject: str, now: float) -> bool:
        return (
            self.action == action
            and self.subject in (subject, "*")
            and self.granted_at <= now < self.expires_at
        )


@dataclass(frozen=True)
class Maintenance:
    since: float
    until: float
    reason: str
    by: str = ""


@dataclass(frozen=True)
class HistoryFault:
    reason: str
    since: float


def _floats_ok(d: dict[str, Any], *names: str) -> bool:
    return all(isinstance(d.get(n), int | float) and not isinstance(d.get(n), bool) for n in names)


def _strs_ok(d: dict[str, Any], *names: str) -> bool:
    return all(isinstance(d.get(n), str) for n in names)


class SafetyState:
    """Durable guard state for one agent. Construct once per process (or per test)."""

    def __init__(self, directory: Path, *, now: float, retain_s: float = DEFAULT_RETAIN_S) -> None:
        self.directory = Path(directory)
        self.retain_s = retain_s
        #: sentences about files that were unreadable or corrupt when loaded
        self.problems: list[str] = []
        self.directory.mkdir(parents=True, exist_ok=True)
        self._executions: list[Execution] = []
        self._fixes: list[Fix] = []
        self._approvals: list[Approval] = []
        self._maintenance: Maintenance | None = None
        self._ladders: dict[str, Any] = {}
        self.history_fault: HistoryFault | None = None
        self._load_history(now)
        self._load_approvals(now)
        self._load_maintenance(now)
        self._load_ladders(now)

    # ------------------------------------------------------------------ other writers
    def _stamp(self, name: str) -> tuple[int, int, int] | None:
        try:
            st = self._path(name).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self, now: float) -> list[str]:
        """Re-read the files another process changed since the last look (the operator's
        `maintenance`, `approve` and `remediate --execute` write the same directory while
        the daemon runs). Every write is an atomic rename, so a changed file has a new
        (inode, mtime, size). Returns the names re-read. The first call only records."""
        stamps = getattr(self, "_stamps", None)
        current = {n: self._stamp(n) for n in (HISTORY, APPROVALS, MAINTENANCE)}
        self._stamps = current
        if stamps is None:
            return []
        changed = [n for n in current if current[n] != stamps.get(n)]
        if APPROVALS in changed:
            self._approvals = []
            self._load_approvals(now)
        if MAINTENANCE in changed:
            self._maintenance = None
            self._load_maintenance(now)
        if HISTORY in changed and current[HISTORY] is not None:
            self._load_history(now)
        return changed

    # ------------------------------------------------------------------ loading
    def _path(self, name: str) -> Path:
        return self.directory / name

    def _load_history(self, now: float) -> None:
        fault = read_json(self._path(HISTORY_FAULT), now)
        if fault.data is not None:
            reason = fault.data.get("reason")
            since = fault.data.get("since")
            self.history_fault = HistoryFault(
                reason if isinstance(reason, str) else "the action history was corrupt",
                float(since) if isinstance(since, int | float) else now,
            )
        elif fault.problem:
            # a damaged marker still means "the history is broken"
            self.history_fault = HistoryFault(fault.problem, now)
        loaded = read_json(self._path(HISTORY), now)
        problem = loaded.problem
        if loaded.data is not None:
            try:
                self._executions = [self._execution(e) for e in loaded.data["executions"]]
                self._fixes = [self._fix(e) for e in loaded.data["fixes"]]
            except (KeyError, TypeError, ValueError) as exc:
                self._executions, self._fixes = [], []
                kept = self._path(f"{HISTORY}.corrupt-{int(now)}")
                try:
                    self._path(HISTORY).replace(kept)
                    problem = f"{self._path(HISTORY)} has bad entries ({exc}); kept as {kept.name}"
                except OSError as move_exc:
                    problem = f"{self._path(HISTORY)} has bad entries ({exc}); {move_exc}"
        if problem:
            self.problems.append(problem)
            self.history_fault = HistoryFault(
                f"the action history could not be read: {problem}", now
            )
            try:
                write_json_atomic(self._path(HISTORY_FAULT), asdict(self.history_fault))
            except StateError as exc:
                self.problems.append(str(exc))

    @staticmethod
    def _execution(e: Any) -> Execution:
        if not isinstance(e, dict) or not _strs_ok(e, "action", "subject") or not _floats_ok(
            e, "t"
        ):
            raise ValueError(f"bad execution entry {e!r}"[:160])
        return Execution(
            action=e["action"], subject=e["subject"], t=float(e["t"]),
            problem=str(e.get("problem", "")), finding_subject=str(e.get("finding_subject", "")),
            origin=str(e.get("origin", "policy")),
        )

    @staticmethod
    def _fix(e: Any) -> Fix:
        if not isinstance(e, dict) or not _strs_ok(e, "problem", "subject") or not _floats_ok(
            e, "t"
        ):
            raise ValueError(f"bad fix entry {e!r}"[:160])
        return Fix(e["problem"], e["subject"], float(e["t"]), str(e.get("action", "")))

    def _load_approvals(self, now: float) -> None:
        loaded = read_json(self._path(APPROVALS), now)
        if loaded.problem:
            self.problems.append(f"{loaded.problem}; approvals start empty")
        if loaded.data is None:
            return
        items = loaded.data.get("approvals")
        for a in items if isinstance(items, list) else []:
            if isinstance(a, dict) and _strs_ok(a, "action", "subject") and _floats_ok(
                a, "granted_at", "expires_at"
            ):
                self._approvals.append(Approval(
                    a["action"], a["subject"], float(a["granted_at"]), float(a["expires_at"]),
                    str(a.get("by", "")), str(a.get("reason", "")),
                ))

    def _load_maintenance(self, now: float) -> None:
        loaded = read_json(self._path(MAINTENANCE), now)
        if loaded.problem:
            self.problems.append(f"{loaded.problem}; maintenance is off")
        d = loaded.data
        if d and _floats_ok(d, "since", "until") and isinstance(d.get("reason"), str):
            self._maintenance = Maintenance(
                float(d["since"]), float(d["until"]), d["reason"], str(d.get("by", ""))
            )

    def _load_ladders(self, now: float) -> None:
        loaded = read_json(self._path(LADDERS), now)
        if loaded.problem:
            self.problems.append(f"{loaded.problem}; ladders start from their first rung")
        self._ladders = dict(loaded.data or {})

    # ------------------------------------------------------------------ history
    def _write_history(self, executions: list[Execution], fixes: list[Fix], now: float) -> None:
        horizon = now - self.retain_s
        executions = [e for e in executions if e.t >= horizon][-MAX_ENTRIES:]
        fixes = [f for f in fixes if f.t >= horizon][-MAX_ENTRIES:]
        write_json_atomic(self._path(HISTORY), {
            "version": 1,
            "executions": [asdict(e) for e in executions],
            "fixes": [asdict(f) for f in fixes],
        })
        self._executions, self._fixes = executions, fixes

    def record_execution(
        self, action: str, subject: str, now: float, *, problem: str = "",
        finding_subject: str = "", origin: str = "policy",
    ) -> Execution:
        """Count an action for budgets and cooldowns, and consume a matching approval.

        Call it right before the real runner runs the plan (write-ahead): if it raises
        StateError the action must not run, because it could not be counted.
        """
        entry = Execution(action, subject, now, problem, finding_subject, origin)
        with self._history_locked(now):
            self._write_history([*self._executions, entry], self._fixes, now)
        self.consume_approval(action, subject, now)
        return entry

    def record_fix(self, problem: str, subject: str, now: float, action: str = "") -> Fix:
        """A finding resolved after an action ran for it (the flapping guard counts these)."""
        entry = Fix(problem, subject, now, action)
        with self._history_locked(now):
            self._write_history(self._executions, [*self._fixes, entry], now)
        return entry

    @contextlib.contextmanager
    def _history_locked(self, now: float) -> Iterator[None]:
        """Hold the history lock, with what other processes appended read in first, so
        no process writes back a stale copy (a lost entry would reopen a budget)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path(HISTORY_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
        except OSError as exc:
            raise StateError(f"cannot lock {self._path(HISTORY_LOCK)}: "
                             f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            stamps: dict[str, Any] | None = getattr(self, "_stamps", None)
            if stamps is None or self._stamp(HISTORY) != stamps.get(HISTORY):
                self._load_history(now)
            yield
            if stamps is not None:
                stamps[HISTORY] = self._stamp(HISTORY)  # our own write is not news
        finally:
            os.close(fd)

    def executions(
        self, *, action: str | None = None, subject: str | None = None, since: float = 0.0
    ) -> list[Execution]:
        return [
            e for e in self._executions
            if (action is None or e.action == action)
            and (subject is None or e.subject == subject)
            and e.t >= since
        ]

    def fixes(self, problem: str, subject: str, *, since: float = 0.0) -> list[Fix]:
        return [f for f in self._fixes if f.problem == problem and f.subject == subject
                and f.t >= since]

    def clear_history_fault(self) -> None:
        """An operator has looked at the corrupt history: allow disruptive actions again."""
        try:
            self._path(HISTORY_FAULT).unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(f"cannot remove {self._path(HISTORY_FAULT)}: {exc.strerror}") from exc
        self.history_fault = None

    # ------------------------------------------------------------------ approvals
    def _write_approvals(self, approvals: list[Approval], now: float) -> None:
        live = [a for a in approvals if a.expires_at > now]
        write_json_atomic(self._path(APPROVALS), {"approvals": [asdict(a) for a in live]})
        self._approvals = live

    def approve(
        self, action: str, subject: str, now: float, ttl_s: float, *, by: str = "",
        reason: str = "",
    ) -> Approval:
        """Record an operator's approval of `action` on `subject` ("*" = any) until now+ttl."""
        if ttl_s <= 0:
            raise ValueError("an approval needs a positive lifetime")
        entry = Approval(action, subject, now, now + ttl_s, by, reason)
        self._write_approvals([*self._approvals, entry], now)
        return entry

    def approval(self, action: str, subject: str, now: float) -> Approval | None:
        """The approval that would let `action` run on `subject` now, if any."""
        for a in self._approvals:
            if a.covers(action, subject, now):
                return a
        return None

    def consume_approval(self, action: str, subject: str, now: float) -> Approval | None:
        """Use up one approval (an approval is good for one execution)."""
        found = self.approval(action, subject, now)
        if found is not None:
            rest = list(self._approvals)
            rest.remove(found)
            self._write_approvals(rest, now)
        return found

    def approvals(self, now: float) -> list[Approval]:
        return [a for a in self._approvals if a.granted_at <= now < a.expires_at]

    # ------------------------------------------------------------------ maintenance
    def set_maintenance(
        self, now: float, duration_s: float, reason: str, *, by: str = ""
    ) -> Maintenance:
        if duration_s <= 0:
            raise ValueError("maintenance needs a positive duration")
        entry = Maintenance(now, now + duration_s, reason, by)
        write_json_atomic(self._path(MAINTENANCE), asdict(entry))
        self._maintenance = entry
        return entry

    def clear_maintenance(self) -> None:
        try:
            self._path(MAINTENANCE).unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(f"cannot remove {self._path(MAINTENANCE)}: {exc.strerror}") from exc
        self._maintenance = None

    def maintenance(self, now: float) -> Maintenance | None:
        """The maintenance flag if it is on now (an expired flag is simply off)."""
        m = self._maintenance
        if m is not None and m.since <= now < m.until:
            return m
        return None

    # ------------------------------------------------------------------ ladders
    def ladders(self) -> dict[str, Any]:
        """The policy's persisted ladder positions (a copy; format owned by agent.policy)."""
        return dict(self._ladders)

    def save_ladders(self, data: dict[str, Any]) -> None:
        write_json_atomic(self._path(LADDERS), data)
        self._ladders = dict(data)
