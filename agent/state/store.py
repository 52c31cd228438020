"""The agent's safety state under the state directory, one file per concern.

    history.jsonl       executions and successful fixes (budget, cooldown, flapping):
                        an append-only journal (agent/state/history.py)
    history.fault.json  present while the history is known to be broken (see below)
    approvals.json      operator approvals (`nodewarden approve`), each with an expiry
    maintenance.json    the maintenance flag (`nodewarden maintenance on --for 2h`)
    ladders.json        ladder positions of the policy (opaque to this module)

`SafetyState(directory)` reads every file once; each change is written through at once
(atomically, agent/state/files.py) and a write that fails raises StateError and leaves the
in-memory state as it was, so memory and disk never disagree.

Broken files fail closed. Approvals and ladders are reported (`problems`) and start clean:
losing them is safe (an approval is asked again, a ladder starts from its first rung).
The history must never be silently reset — that would re-open the node-restart budget
and allow a reboot loop (docs/architecture.md safety property 3) — and a maintenance flag must
never be
silently switched off. So:

* a history line that cannot be read is skipped (every valid entry is kept and counts),
  kept aside, and a fault marker `history.fault.json` is written (it survives restarts):
  `history_fault` is set, and the budget guard denies every action but a page, with the
  reason, until an operator clears it (`nodewarden maintenance clear-history`);
* a maintenance file that cannot be read is left in place and `maintenance_fault` is set:
  the maintenance guard treats maintenance as on (automatic actions wait, pages go out,
  one says why) until an operator sets it again (`nodewarden maintenance on|off`).

All times are wall-clock seconds passed in by the caller (Clock.now()): they must mean the
same thing after a reboot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.state.files import Loaded, StateError, read_json, write_json_atomic
from agent.state.history import (
    DEFAULT_RETAIN_S,
    JOURNAL,
    Execution,
    Fix,
    Journal,
)

HISTORY = JOURNAL
HISTORY_FAULT = "history.fault.json"
APPROVALS = "approvals.json"
MAINTENANCE = "maintenance.json"
LADDERS = "ladders.json"

__all__ = ["DEFAULT_RETAIN_S", "Approval", "Execution", "Fix", "HistoryFault", "Maintenance",
           "SafetyState"]


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
        #: sentences about files that were unreadable or corrupt when loaded
        self.problems: list[str] = []
        self.directory.mkdir(parents=True, exist_ok=True)
        self._journal = Journal(self.directory, retain_s)
        self._approvals: list[Approval] = []
        self._maintenance: Maintenance | None = None
        #: why the maintenance file could not be read (maintenance counts as on)
        self.maintenance_fault: str | None = None
        self._ladders: dict[str, Any] = {}
        self.history_fault: HistoryFault | None = None
        self._stamps: dict[str, tuple[int, int, int] | None] | None = None
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
        the daemon runs). Every write of those is an atomic rename (a changed file has a
        new (inode, mtime, size)); the history is an append-only journal, read from where
        it was left. Returns the names re-read. The first call only records."""
        stamps = self._stamps
        current = {n: self._stamp(n) for n in (APPROVALS, MAINTENANCE, HISTORY_FAULT)}
        self._stamps = current
        changed = [n for n in current if stamps is not None and current[n] != stamps.get(n)]
        if APPROVALS in changed:
            self._approvals = []
            self._load_approvals(now)
        if MAINTENANCE in changed:
            self._maintenance, self.maintenance_fault = None, None
            self._load_maintenance(now)
        if HISTORY_FAULT in changed:
            self._read_fault_marker(now)
        if self._journal.changed():
            self._history_problems(self._journal.load(now), now)
            changed.append(HISTORY)
        return changed

    # ------------------------------------------------------------------ loading
    def _path(self, name: str) -> Path:
        return self.directory / name

    def _read_fault_marker(self, now: float) -> None:
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
        else:
            self.history_fault = None

    def _load_history(self, now: float) -> None:
        self._read_fault_marker(now)
        problems = self._journal.load_legacy(now)
        try:
            with self._journal.locked(now) as bad:
                problems += bad  # kept aside; the rewrite leaves the valid entries only
                problems += self._journal.compact(now)
        except StateError as exc:
            problems.append(str(exc))
            problems += self._journal.load(now)
        self._history_problems(problems, now)

    def _history_problems(self, problems: list[str], now: float) -> None:
        """Bad history lines fault the history (valid entries are kept and count)."""
        if not problems:
            return
        self.problems += problems
        self.history_fault = HistoryFault(
            f"the action history could not be read whole ({problems[0]}"
            + (f"; {len(problems) - 1} more" if len(problems) > 1 else "")
            + "); its valid entries are kept", now)
        try:
            write_json_atomic(self._path(HISTORY_FAULT), asdict(self.history_fault))
        except StateError as exc:
            self.problems.append(str(exc))

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
        loaded = read_json(self._path(MAINTENANCE), now, keep_corrupt=True)
        d = loaded.data
        if loaded.problem is None and d is not None and not (
                _floats_ok(d, "since", "until") and isinstance(d.get("reason"), str)):
            loaded = Loaded(None, f"{self._path(MAINTENANCE)} has no valid since, until "
                                  "and reason")
        if loaded.problem:
            self.maintenance_fault = loaded.problem
            self.problems.append(f"{loaded.problem}; maintenance counts as on until an "
                                 "operator sets it (nodewarden maintenance on|off)")
            return
        if d is not None:
            self._maintenance = Maintenance(
                float(d["since"]), float(d["until"]), d["reason"], str(d.get("by", ""))
            )

    def _load_ladders(self, now: float) -> None:
        loaded = read_json(self._path(LADDERS), now)
        if loaded.problem:
            self.problems.append(f"{loaded.problem}; ladders start from their first rung")
        self._ladders = dict(loaded.data or {})

    # ------------------------------------------------------------------ history
    def record_execution(
        self, action: str, subject: str, now: float, *, problem: str = "",
        finding_subject: str = "", origin: str = "policy", target: str = "",
    ) -> Execution:
        """Count an action for budgets and cooldowns, and consume a matching approval.

        Call it right before the real runner runs the plan (write-ahead): if it raises
        StateError the action must not run, because it could not be counted.
        """
        entry = Execution(action, subject, now, problem, finding_subject, origin, target)
        with self._journal.locked(now) as bad:
            self._history_problems(bad, now)
            self.problems += self._journal.append(entry, now)
        self.consume_approval(action, subject, now)
        return entry

    def record_fix(self, problem: str, subject: str, now: float, action: str = "",
                   target: str = "") -> Fix:
        """A finding resolved after an action ran for it (the flapping guard counts these)."""
        entry = Fix(problem, subject, now, action, target)
        with self._journal.locked(now) as bad:
            self._history_problems(bad, now)
            self.problems += self._journal.append(entry, now)
        return entry

    def executions(
        self, *, action: str | None = None, subject: str | None = None,
        target: str | None = None, problem: str | None = None, since: float = 0.0,
    ) -> list[Execution]:
        return [
            e for e in self._journal.entries
            if isinstance(e, Execution)
            and (action is None or e.action == action)
            and (subject is None or e.subject == subject)
            and (target is None or e.target == target)
            and (problem is None or e.problem == problem)
            and e.t >= since
        ]

    def fixes(self, problem: str, subject: str | None = None, *, target: str | None = None,
              since: float = 0.0) -> list[Fix]:
        """Fixes of `problem` for this finding subject or this target (either matches)."""
        return [f for f in self._journal.entries
                if isinstance(f, Fix) and f.problem == problem and f.t >= since
                and ((subject is not None and f.subject == subject)
                     or (target is not None and f.target == target))]

    def clear_history_fault(self) -> None:
        """An operator has looked at the broken history: allow actions again."""
        try:
            self._path(HISTORY_FAULT).unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(f"cannot remove {self._path(HISTORY_FAULT)}: {exc.strerror}") from exc
        self.history_fault = None
        self._journal.bad.clear()

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
        if not ttl_s > 0 or ttl_s == float("inf"):
            raise ValueError("an approval needs a positive, finite lifetime")
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
        if not duration_s > 0 or duration_s == float("inf"):
            raise ValueError("maintenance needs a positive, finite duration")
        entry = Maintenance(now, now + duration_s, reason, by)
        write_json_atomic(self._path(MAINTENANCE), asdict(entry))
        self._maintenance, self.maintenance_fault = entry, None
        return entry

    def clear_maintenance(self) -> None:
        try:
            self._path(MAINTENANCE).unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(f"cannot remove {self._path(MAINTENANCE)}: {exc.strerror}") from exc
        self._maintenance, self.maintenance_fault = None, None

    def maintenance(self, now: float) -> Maintenance | None:
        """The maintenance flag if it is on now (an expired flag is simply off)."""
        m = self._maintenance
        if m is not None and m.since <= now < m.until:
            return m
        return None

    # ------------------------------------------------------------------ faults
    def faults(self) -> list[str]:
        """What is broken and makes the guards fail closed, one sentence each."""
        out = []
        if self.history_fault is not None:
            out.append(f"history: {self.history_fault.reason}")
        if self.maintenance_fault is not None:
            out.append(f"maintenance: {self.maintenance_fault}")
        return out

    # ------------------------------------------------------------------ ladders
    def ladders(self) -> dict[str, Any]:
        """The policy's persisted ladder positions (a copy; format owned by agent.policy)."""
        return dict(self._ladders)

    def save_ladders(self, data: dict[str, Any]) -> None:
        write_json_atomic(self._path(LADDERS), data)
        self._ladders = dict(data)
