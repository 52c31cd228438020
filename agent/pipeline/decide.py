"""The decision pipeline: observations in, timeline events and decisions out.

    LogLine ──matcher──> SignatureMatch ─┐
    MetricSample, ProbeResult, DeviceEvent ┴─> Detectors ──Finding──> Policy (ladders)
        ──Proposal──> GuardChain ──allowed──> remediations.load(action).plan() ──> Decision

The contract with the drivers (the daemon, `simulate`, `remediate`) is
agent/pipeline/api.py: `observe(obs)`, `decide(now)`, `complete(decision, outcome)`.
This module only decides; a driver carries a Decision out with an Executor and hands the
Outcome back. Events carry absolute wall-clock `t`; `simulate` re-bases them.

Observations: a kernel line's matches pass agent/detect/oomreport.py first (an OOM kill
is tied to its report's service, never to a process name); only trusted lines count
towards the findings the policy sees (agent/detect/findings.py).

Order inside `decide(now)`:
1. re-read safety state another process changed (maintenance, approvals, history);
2. `Detectors.tick(now)` (quiet signature findings resolve);
3. `Policy.step(trusted findings, now)` gives the rungs due now; event episodes it
   verified as over are resolved (`Detectors.end`);
4. every proposal goes through the guard chain: one "verdict" event per guard;
5. allowed: the remediation plans it (a plan it refuses is a "plan" verdict, deny); a
   "plan" event; when the mode executes, the execution is recorded first (write-ahead:
   budgets and cooldowns count it even if the process dies while it runs; if it cannot
   be recorded it does not run, and a person is paged: that page says why). A page is
   the exception: it goes out even when it cannot be recorded (a full disk), and says
   how many repeats were folded into it;
6. denied: the policy is told which guards denied (hold or climb); a guard that says
   "page a person" (flapping, a broken history or maintenance file, a write-ahead that
   failed) adds one page proposal per episode.

`complete()` emits the "outcome" event, tells the policy what ran (a failed run climbs at
once), and releases a lease taken for it (not for a node restart that went ahead: the
lease covers the time the node takes to come back, and `give_back` releases it after the
boot, once the restart's intent is reconciled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from agent.clock import Clock
from agent.config import Config
from agent.detect.findings import Detectors
from agent.detect.matcher import Matcher
from agent.detect.oomreport import OomReports
from agent.detect.rules import ProbeRule
from agent.guards import LeaseClient, NoCoordinator
from agent.model import (
    DeviceEvent,
    Finding,
    Lease,
    LogLine,
    MetricSample,
    Observation,
    Outcome,
    ProbeResult,
    Proposal,
)
from agent.pipeline.api import Decision, Event
from agent.pipeline.consider import Decider
from agent.pipeline.contexts import ActionContexts, guard_chain
from agent.pipeline.events import (
    finding_event,
    note_event,
)
from agent.policy.engine import Policy
from agent.report.status_file import StatusFile
from agent.state import SafetyState
from remediations import InvalidParams, UnknownAction, build_plan

#: policy steps per decide() (a ladder longer than this climbs over several cycles)
MAX_STEPS = 8


class DecisionPipeline:
    """Detectors, policy, guards and planning for one agent (agent/pipeline/api.py)."""

    def __init__(
        self,
        config: Config,
        *,
        matcher: Matcher,
        state: SafetyState,
        clock: Clock,
        contexts: ActionContexts,
        lease_client: LeaseClient | None = None,
        check_preconditions: bool = True,
        status: StatusFile | None = None,
    ) -> None:
        self.config = config
        self.status = status
        self.matcher = matcher
        self.state = state
        self.clock = clock
        self.contexts = contexts
        self.detectors = Detectors(config.rules)
        self.reports = OomReports()
        self.policy = Policy(config.ladders, hostname=config.agent.hostname, state=state,
                             health=self._health)
        self.chain = guard_chain(config, state, contexts,
                                 lease_client=lease_client or NoCoordinator(),
                                 check_preconditions=check_preconditions)
        self.decider = Decider(self.chain, state, contexts)
        #: (problem, finding subject) already paged because a guard said so, this episode
        self._paged: set[tuple[str, str]] = set()
        self._sentence = "no action: nothing observed yet"
        self.state.refresh(clock.now())  # records what is on disk now

    # ------------------------------------------------------------------ observe
    def observe(self, obs: Observation) -> Sequence[Event]:
        """Detection for one observation: "finding" / "resolved" events."""
        if isinstance(obs, LogLine):
            changes: list[Finding] = []
            matches = self.matcher.match(obs)
            if matches and obs.from_kernel:
                matches = self.reports.rewrite(matches)
            for m in matches:
                changes += self.detectors.on_match(m)
            t = obs.t
        elif isinstance(obs, MetricSample):
            changes, t = self.detectors.on_metrics(obs), obs.t
        elif isinstance(obs, ProbeResult):
            changes, t = self.detectors.on_probe(obs), obs.t
        elif isinstance(obs, DeviceEvent):
            changes, t = self.detectors.on_device(obs), obs.t
        else:  # pragma: no cover - the Observation union is closed
            return ()
        return self._changes(changes, t)

    def _changes(self, changes: Sequence[Finding], t: float) -> list[Event]:
        out = []
        for f in changes:
            if f.state == "resolved":
                self._paged.discard(f.key)
            out.append(finding_event(f, t))
        return out

    # ------------------------------------------------------------------ decide
    def decide(self, now: float) -> tuple[Sequence[Event], Sequence[Decision]]:
        events: list[Event] = self.decider.renew(now)
        self.state.refresh(now)
        events += self._changes(self.detectors.tick(now), now)
        decisions: list[Decision] = []
        acted: list[str] = []
        # A rung denied for good (lease, budget, mode...) makes the next rung due now: step
        # again, so a ladder climbs to its page in the same cycle, not one cycle later.
        # findings do not change while we decide; the policy skips (and notes) the
        # untrusted ones, which are reported only
        firing = self.detectors.active()
        for _ in range(MAX_STEPS):
            queue = list(self.policy.step(firing, now))
            ended = self._end_episodes(now)
            if ended:  # an episode the policy just ended must not be proposed again
                events += ended
                firing = self.detectors.active()
            if not queue:
                break
            while queue:
                proposal = queue.pop(0)
                decision, page = self._consider(proposal, now, events)
                if decision is not None:
                    decisions.append(decision)
                    acted.append(f"{decision.plan.action} {decision.plan.subject} "
                                 f"({'execute' if decision.execute else 'dry-run'})")
                if page is not None:
                    queue.append(page)
        for warning in self.policy.warnings:
            events.append(note_event(warning, now))
        self.policy.warnings.clear()
        self._sentence = self._summarize(acted, events, firing)
        if self.status is not None:
            self.status.write(now, self._sentence, firing)
        return events, decisions

    def _end_episodes(self, now: float) -> list[Event]:
        """Resolve the event findings whose episode the policy verified as over."""
        changes: list[Finding] = []
        for problem, subject, why in self.policy.ended:
            changes += self.detectors.end(problem, subject, why, now)
        self.policy.ended.clear()
        return self._changes(changes, now)

    def _health(self, action: str, subject: str, params: Mapping[str, str],
                target: str) -> str | None:
        """Why `target` is not healthy after `action` ran on it (None: healthy): a probe
        finding whose ladder acts on the same target is firing, or the plan's own verify
        steps fail now (run read-only, when this pipeline checks the host at all)."""
        for f in self.detectors.actionable():
            rule = next((r for r in self.config.rules if r.name == f.rule), None)
            ladder = self.policy.ladders.get(f.problem)
            if not isinstance(rule, ProbeRule) or ladder is None:
                continue
            if any(self.policy.rung_target(r, f)[2] == target for r in ladder.rungs):
                return f"probe finding {f.problem} {f.subject} is firing"
        runner = self.contexts.base.runner
        if runner is None:
            return None
        try:
            plan = build_plan(action, subject, params, self.contexts.for_action(action))
        except (InvalidParams, UnknownAction, ImportError):
            return None  # it planned when it ran; the guards judge the next rung
        for step in plan.verify:
            result = runner.run(step)
            if not result.ran or result.timed_out or result.exit_code not in step.ok_exit:
                return f"{step.description or ' '.join(step.argv)}: not so now"
        return None

    def _consider(
        self, proposal: Proposal, now: float, events: list[Event]
    ) -> tuple[Decision | None, Proposal | None]:
        considered = self.decider.consider(proposal, now)
        events += considered.events
        if considered.decision is None:
            self.policy.record(considered.proposal, now, "denied",
                               denied_by=considered.denied_by)
            return None, self._page_for(considered.proposal, considered.page)
        return considered.decision, None

    def _page_for(self, proposal: Proposal, why: str | None) -> Proposal | None:
        """A guard said "page a person": one page per episode of the finding."""
        key = (proposal.problem, proposal.finding_subject)
        if why is None or proposal.action == "page" or key in self._paged:
            return None
        self._paged.add(key)
        subject = f"{proposal.problem} {proposal.finding_subject} on {self.config.agent.hostname}"
        return Proposal(
            action="page", subject=subject, problem=proposal.problem,
            params=MappingProxyType({"problem": proposal.problem, "message": why[:400]}),
            rung=-1, trusted=True, finding_subject=proposal.finding_subject,
            reason=f"a guard asks for a person: {why}", target=subject,
        )

    # ------------------------------------------------------------------ complete
    def complete(self, decision: Decision, outcome: Outcome) -> Sequence[Event]:
        now = self.clock.now()
        page_lost = decision.plan.action == "page" and decision.failed(outcome)
        if outcome.executed:
            self.policy.record(decision.proposal, now, "executed" if outcome.ok else "failed")
        else:  # a page that never ran is retried like one that failed
            self.policy.record(decision.proposal, now, "failed" if page_lost else "planned")
        events = self.decider.finish(decision, outcome, now)
        if page_lost:
            # a page that did not go out is tried again: the ladder retries its page rung
            # after retry_s, a guard's page on its next deny
            self._paged.discard((decision.proposal.problem, decision.proposal.finding_subject))
        for warning in self.policy.warnings:
            events.append(note_event(warning, now))
        self.policy.warnings.clear()
        return events

    def give_back(self, lease: Lease, why: str) -> Sequence[Event]:
        """A lease no running plan holds, released through the Decider (a node restart's,
        once its intent is reconciled after the boot)."""
        return self.decider.give_back(lease, why, self.clock.now())

    # ------------------------------------------------------------------ status
    def active(self) -> list[Finding]:
        """Every firing finding, the untrusted ones too (status, reports)."""
        return self.detectors.active()

    def sentence(self) -> str:
        """The last cycle's one-line summary (docs/architecture.md, convention 3)."""
        return self._sentence

    def carry_over(self, previous: object) -> bool:
        """After a reload: keep what the previous pipeline detected when the rules are
        the same (kernel evidence is not read twice: a hung-task line prints 10 times a
        boot), so a reload does not end findings that are still firing."""
        if not isinstance(previous, DecisionPipeline) or previous.config.rules != self.config.rules:
            return False
        self.detectors = previous.detectors
        self.reports = previous.reports
        return True

    def idle(self) -> bool:
        """Nothing is firing: a decide() now would propose nothing (cheap to ask)."""
        return not self.detectors.any_firing()

    def _summarize(
        self, acted: list[str], events: list[Event], firing: Sequence[Finding]
    ) -> str:
        n = f"{len(firing)} finding{'' if len(firing) == 1 else 's'} firing"
        if acted:
            return f"acting: {', '.join(acted)}; {n}"
        denied = [e for e in events if e.kind == "verdict" and not e.fields.get("allow")]
        if denied:
            f = denied[0].fields
            return f"no action: {f['action']} {f['subject']} denied: {f['reason']}; {n}"
        if self.policy.notes:
            return f"no action: {self.policy.notes[0]}; {n}"
        return f"no action: {n}"
