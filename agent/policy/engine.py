"""The policy: findings in, proposals out, one ladder position per finding.

    policy = Policy(config.ladders, hostname=config.agent.hostname, state=safety_state)
    proposals = policy.step(detectors.active(), now)     # what to try now
    ...guards, executor...
    policy.record(proposal, now, "executed" | "planned" | "failed" | "denied",
                  denied_by=("budget",))                  # what happened to it

For a firing finding with a ladder, `step` proposes the current rung the first time it
sees it, then waits the rung's `verify_s`; if the finding still fires, the next rung.
When the finding stops firing, the position is kept for the ladder's `quiet_s` (a fault
that comes back soon — incident 000, the same night — continues at the next rung at once),
then forgotten (back to the first rung). A position records what ran, not what was
merely proposed: `step` assumes a proposal was planned; `record` corrects that.

`record(..., "denied", denied_by=...)`: a rung held by maintenance, approval or cooldown
(temporary, operator-controlled) is proposed again after the ladder's `retry_s`; a rung
denied for any other reason (mode, budget, lease, flapping, preconditions) is skipped, so
the ladder climbs towards its last rung (usually page) at once. An untrusted finding
(kernel line written from userspace) gets no proposal at all: it is reported only.

When a finding resolves after one of its rungs *executed*, that is a "fix", recorded in
the SafetyState for the flapping guard. An `event` ladder (an OOM kill) verifies its rung
after `verify_s` instead of waiting for the finding to go quiet (agent/policy/ladder.py):
no new occurrence and a healthy target end the episode at once (`ended` lists the
findings the driver then resolves), and the next occurrence starts at the first rung.
Positions persist in the state dir (ladders.json) so that after a node restart the ladder
continues (at page), not from the top.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any, Literal

from agent.detect.template import render
from agent.model import Finding, Proposal
from agent.policy.ladder import Ladder, Rung
from agent.state import SafetyState, StateError
from remediations import load, target_of

#: asks whether the target of a rung that ran is healthy now: (action, subject, params,
#: target) -> None when healthy, else why not (the driver runs the plan's verify steps)
HealthCheck = Callable[[str, str, "MappingProxyType[str, str]", str], "str | None"]

RecordOutcome = Literal["executed", "planned", "failed", "denied"]

#: a denial by one of these guards holds the rung (retried after retry_s) instead of climbing
HOLDING_GUARDS = frozenset({"maintenance", "approval", "cooldown"})


@dataclass
class _Position:
    problem: str
    subject: str
    next_rung: int = 0
    due_at: float = 0.0
    last_rung: int = -1
    last_action: str = ""
    last_rung_at: float | None = None
    last_firing: float = 0.0
    firing: bool = True
    #: a remedial rung (not a page) ran in this episode: its end is a fix
    executed: bool = False
    #: the last remedial rung that ran: action, subject, params and canonical target
    #: (the fix is recorded against it; an event ladder checks that target's health)
    fix_action: str = ""
    fix_subject: str = ""
    fix_params: dict[str, str] | None = None
    fix_target: str = ""
    #: the last rung ran and failed (climb at once, nothing to verify)
    failed: bool = False
    #: the last rung was denied (climb at once, nothing to verify)
    denied: bool = False


@dataclass(frozen=True)
class LadderPosition:
    """Where one finding stands on its ladder (for `nodewarden status`)."""

    problem: str
    subject: str
    next_rung: int
    rungs: int
    last_action: str
    last_rung_at: float | None
    due_at: float
    firing: bool
    summary: str


@functools.lru_cache(maxsize=4096)
def _subject_in(subject: str, globs: tuple[str, ...]) -> bool:
    """Whether a ladder's subject globs take this subject (asked every cycle per finding)."""
    return any(fnmatch.fnmatchcase(subject, g) for g in globs)


class Policy:
    """Maps firing findings to proposals along their ladders. Pure apart from `state`."""

    def __init__(
        self, ladders: Sequence[Ladder], *, hostname: str, state: SafetyState | None = None,
        health: HealthCheck | None = None,
    ) -> None:
        self.ladders = {ladder.problem: ladder for ladder in ladders}
        self.hostname = hostname
        self.state = state
        self.health = health
        #: sentences about state that could not be saved (the policy goes on in memory)
        self.warnings: list[str] = []
        #: one line per finding considered in the last step ("why nothing happened")
        self.notes: list[str] = []
        #: (problem, subject, why) of event episodes verified fixed in the last step: the
        #: driver resolves those findings (Detectors.end)
        self.ended: list[tuple[str, str, str]] = []
        self._pos: dict[tuple[str, str], _Position] = {}
        if state is not None:
            self._load(state.ladders())

    # ------------------------------------------------------------------ persistence
    def _load(self, data: dict[str, Any]) -> None:
        known = {f.name for f in fields(_Position)}
        for item in data.get("positions", []) if isinstance(data.get("positions"), list) else []:
            try:
                pos = _Position(**{k: v for k, v in item.items() if k in known})
            except (TypeError, AttributeError):
                continue
            # A (re)started agent has not seen the finding yet: the position waits for it
            # to fire again (within quiet_s it continues at the next rung), and it going
            # quiet is not counted as a fix the flapping guard would believe.
            pos.firing = False
            self._pos[(pos.problem, pos.subject)] = pos

    def _save(self) -> None:
        if self.state is None:
            return
        try:
            self.state.save_ladders(
                {"version": 1, "positions": [asdict(p) for p in self._pos.values()]}
            )
        except StateError as exc:
            self.warnings.append(str(exc))

    # ------------------------------------------------------------------ deciding
    def ladder_for(self, finding: Finding) -> Ladder | None:
        ladder = self.ladders.get(finding.problem)
        if ladder is None or not _subject_in(finding.subject, ladder.subjects):
            return None
        return ladder

    def step(self, findings: Iterable[Finding], now: float) -> list[Proposal]:
        """Proposals due now for `findings` (pass every current finding, e.g. active())."""
        firing: dict[tuple[str, str], Finding] = {}
        untrusted: list[Finding] = []
        for f in findings:
            if f.state != "firing":
                continue
            if f.trusted:
                firing.setdefault(f.key, f)
            else:
                untrusted.append(f)
        problems_firing = {k[0] for k in firing}
        changed = self._forget_quiet(firing, now)
        out: list[Proposal] = []
        self.notes = [f"{f.problem} {f.subject}: untrusted (written from userspace): "
                      "reported, never acted on" for f in untrusted if f.key not in firing]
        for key, finding in sorted(firing.items()):
            ladder = self.ladder_for(finding)
            if ladder is None:
                self.notes.append(f"{key[0]} {key[1]}: no ladder; reported only")
                continue
            blockers = sorted(problems_firing & set(ladder.suppressed_by))
            if blockers:
                self.notes.append(f"{key[0]} {key[1]}: no action while "
                                  f"{', '.join(blockers)} fires (the cause is elsewhere)")
                continue
            pos = self._pos.get(key)
            if pos is None:
                pos = self._pos[key] = _Position(key[0], key[1], due_at=now)
                changed = True
            elif not pos.firing:  # back within quiet_s: continue at the next rung now
                pos.firing, pos.due_at = True, now
                changed = True
            pos.last_firing = now
            proposal = self._due(ladder, pos, finding, now)
            if proposal is not None:
                out.append(proposal)
                changed = True
            elif key not in self._pos:  # an event episode ended
                changed = True
        if changed:
            self._save()
        return out

    def _forget_quiet(self, firing: dict[tuple[str, str], Finding], now: float) -> bool:
        changed = False
        for key, pos in list(self._pos.items()):
            if key in firing:
                continue
            ladder = self.ladders.get(key[0])
            if pos.firing:
                pos.firing = False
                changed = True
                if pos.executed:
                    self._record_fix(pos, now)
                    pos.executed = False
            if ladder is None or now - pos.last_firing >= ladder.quiet_s:
                del self._pos[key]
                changed = True
        return changed

    def _record_fix(self, pos: _Position, now: float) -> None:
        if self.state is None:
            return
        try:
            self.state.record_fix(pos.problem, pos.subject, now, pos.fix_action,
                                  target=pos.fix_target)
        except StateError as exc:
            self.warnings.append(str(exc))

    def _verify_event(self, ladder: Ladder, pos: _Position, f: Finding, now: float) -> str:
        """An event ladder's rung after its verify_s: why to climb, or "" (verified: the
        episode is over)."""
        assert pos.last_rung_at is not None
        if pos.denied:
            return f"{pos.last_action} was denied"
        if pos.failed:
            return f"{pos.last_action} failed"
        if f.last_seen > pos.last_rung_at:
            return f"seen again at {f.last_seen:.0f} after {pos.last_action}"
        if pos.executed and self.health is not None:
            why = self.health(pos.fix_action, pos.fix_subject,
                              MappingProxyType(dict(pos.fix_params or {})), pos.fix_target)
            if why:
                return f"{pos.fix_target} is not healthy after {pos.fix_action}: {why}"
        what = (f"fixed by {pos.fix_action} {pos.fix_target}" if pos.executed
                else f"no new occurrence after {pos.last_action}")
        self._end_episode(pos, f, f"{what}: not seen for {now - pos.last_rung_at:.0f}s"
                          + (", target healthy" if pos.executed else ""), now)
        return ""

    def _end_episode(self, pos: _Position, f: Finding, why: str, now: float) -> None:
        """An event episode is over: the finding resolves (the driver), the position goes,
        and a rung that ran counts as a fix."""
        self.ended.append((f.problem, f.subject, why))
        if pos.executed:
            self._record_fix(pos, now)
        del self._pos[(pos.problem, pos.subject)]
        self.notes.append(f"{f.problem} {f.subject}: episode over ({why})")

    def _due(self, ladder: Ladder, pos: _Position, f: Finding, now: float) -> Proposal | None:
        where = f"{f.problem} {f.subject}"
        climb_why = ""
        if ladder.event and pos.last_rung >= 0 and now >= pos.due_at:
            climb_why = self._verify_event(ladder, pos, f, now)
            if not climb_why:
                return None
            pos.executed = False  # what ran did not fix this episode
            if pos.next_rung >= len(ladder.rungs):
                assert pos.last_rung_at is not None
                if f.last_seen <= pos.last_rung_at:  # nothing left to try this episode
                    self._end_episode(pos, f, f"ladder done: {climb_why}", now)
                    return None
                # it happened again after the last rung: that occurrence is a new episode
                self.notes.append(f"{where}: {climb_why}: a new episode")
                pos.next_rung, pos.last_rung, pos.last_action = 0, -1, ""
                climb_why = ""
        if pos.next_rung >= len(ladder.rungs):
            self.notes.append(f"{where}: ladder exhausted after {pos.last_action}; "
                              f"resets after {ladder.quiet_s:g}s quiet")
            return None
        if now < pos.due_at:
            self.notes.append(f"{where}: waiting {now - (pos.last_rung_at or now):.0f}/"
                              f"{pos.due_at - (pos.last_rung_at or now):.0f}s for "
                              f"{pos.last_action or 'retry'} to clear it")
            return None
        index = pos.next_rung
        rung = ladder.rungs[index]
        if index == 0:
            why = f"rung 1 of {len(ladder.rungs)}: {where} firing since {f.first_seen:.0f}"
        elif climb_why:
            why = f"rung {index + 1} of {len(ladder.rungs)}: {where} {climb_why}"
        else:
            why = (f"rung {index + 1} of {len(ladder.rungs)}: {where} still firing after "
                   f"{pos.last_action or 'the previous rung'}")
        proposal = self._proposal(rung, index, f, why)
        pos.last_rung, pos.next_rung = index, index + 1
        pos.last_action, pos.last_rung_at = rung.action, now
        pos.due_at, pos.failed, pos.denied = now + rung.verify_s, False, False
        self.notes.append(f"{where}: propose {rung.action} {proposal.subject} ({why})")
        return proposal

    def rung_target(self, rung: Rung, f: Finding
                    ) -> tuple[str, Mapping[str, str], str]:
        """The subject, params and target `rung` has for finding `f` (the one rendering
        of a rung, for proposals and for health checks alike)."""
        values = {"subject": f.subject, "problem": f.problem, "host": self.hostname}
        subject = render(rung.subject, values)
        params = MappingProxyType({k: render(v, values) for k, v in rung.params.items()})
        return subject, params, target_of(rung.action, subject, params)

    def _proposal(self, rung: Rung, index: int, f: Finding, why: str) -> Proposal:
        remediation = load(rung.action)
        subject, params, target = self.rung_target(rung, f)
        return Proposal(
            action=rung.action,
            subject=subject,
            problem=f.problem,
            params=params,
            rung=index,
            disruptive=remediation.DISRUPTIVE,
            needs_lease=remediation.NEEDS_LEASE if rung.lease is None else rung.lease,
            needs_approval=rung.needs_approval,
            trusted=f.trusted,
            finding_subject=f.subject,
            reason=why,
            target=target,
        )

    # ------------------------------------------------------------------ feedback
    def record(
        self, proposal: Proposal, now: float, outcome: RecordOutcome,
        denied_by: Sequence[str] = (),
    ) -> None:
        """What happened to a proposal from `step` (see the module docstring)."""
        pos = self._pos.get((proposal.problem, proposal.finding_subject))
        if pos is None or pos.last_rung != proposal.rung:
            return
        ladder = self.ladders.get(proposal.problem)
        before = dataclasses.replace(pos)
        if outcome in ("executed", "failed") and proposal.action != "page":
            pos.executed = True
            pos.fix_action, pos.fix_subject = proposal.action, proposal.subject
            pos.fix_params, pos.fix_target = dict(proposal.params), proposal.acted_on
        if outcome == "failed" and proposal.action == "page" and ladder is not None:
            # a page that did not go out is tried again after retry_s, never climbed past
            pos.next_rung, pos.due_at, pos.denied = proposal.rung, now + ladder.retry_s, True
        elif outcome == "failed":
            pos.due_at, pos.failed = now, True  # it did not work: climb at the next step
        if outcome == "denied":
            recent = self._recent_run(proposal, ladder, now) if set(denied_by) == {
                "cooldown"} else None
            if recent is not None and ladder is not None:
                # Another ladder ran this very action moments ago (a hung nfsd restarted
                # nfs-server before the storage hang was recognised): that run counts as
                # this rung, so the ladder waits out its verify time, then climbs.
                pos.executed = True
                pos.fix_action, pos.fix_subject = proposal.action, proposal.subject
                pos.fix_params, pos.fix_target = dict(proposal.params), proposal.acted_on
                pos.last_rung_at = recent
                pos.due_at = recent + ladder.rungs[proposal.rung].verify_s
            elif set(denied_by) and set(denied_by) <= HOLDING_GUARDS and ladder is not None:
                pos.next_rung = proposal.rung
                pos.due_at, pos.denied = now + ladder.retry_s, True
            else:
                pos.due_at, pos.denied = now, True
        if pos != before:  # "planned" in dry-run changes nothing: no fsync'd rewrite
            self._save()

    def _recent_run(self, proposal: Proposal, ladder: Ladder | None, now: float) -> float | None:
        """When the same action on the same subject ran within this rung's verify time."""
        if self.state is None or ladder is None or proposal.rung >= len(ladder.rungs):
            return None
        verify_s = ladder.rungs[proposal.rung].verify_s
        runs = self.state.executions(action=proposal.action, target=proposal.acted_on,
                                     since=now - verify_s)
        return max((e.t for e in runs), default=None)

    # ------------------------------------------------------------------ status
    def positions(self) -> list[LadderPosition]:
        out = []
        for (problem, subject), pos in sorted(self._pos.items()):
            ladder = self.ladders.get(problem)
            n = len(ladder.rungs) if ladder else 0
            if pos.next_rung >= n:
                summary = f"exhausted after {pos.last_action}"
            elif pos.last_action:
                summary = f"next: {ladder.rungs[pos.next_rung].action if ladder else '?'} " \
                          f"at {pos.due_at:.0f} unless it clears"
            else:
                summary = "first rung due"
            out.append(LadderPosition(problem, subject, pos.next_rung, n, pos.last_action,
                                      pos.last_rung_at, pos.due_at, pos.firing, summary))
        return out
