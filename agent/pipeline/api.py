"""The contract between the decision pipeline and its drivers (the daemon, `simulate`).

The pipeline (agent/pipeline/decide.py) is pure decision code: observations in, timeline events
and decisions out. A driver feeds it and carries out what it decides:

    events = pipeline.observe(obs)          # match, detect: "finding" / "resolved" events
    events, decisions = pipeline.decide(now)   # policy + guard chain: verdict/plan events
    for decision in decisions:
        outcome = executor.run(decision.plan)   # the daemon does this in a worker thread
        events += pipeline.complete(decision, outcome)   # "outcome" event, budgets recorded

`simulate` runs the executor inline with a recording runner and a FakeClock; the daemon
runs it in a bounded worker with the subprocess runner (enforce) or the recording runner
(dry-run). Every event goes to the audit log and the reporter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agent.model import EMPTY, Lease, Observation, Outcome, Plan, Proposal, Verdict

EventKind = Literal["finding", "resolved", "verdict", "plan", "outcome", "note"]


@dataclass(frozen=True)
class Event:
    """One line of the timeline: what happened at `t`, as JSON-ready fields.

    findings carry `problem` and `subject`; plans, verdicts and outcomes carry `action`;
    verdicts carry `guard`, `allow`, `reason` (issue 4, section 7).
    """

    t: float
    kind: EventKind
    fields: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "kind": self.kind, **self.fields}


@dataclass(frozen=True)
class Decision:
    """A proposal that passed the guard chain, with its plan and whether to execute it.

    `execute` is False in dry-run mode: the plan is handed to the recording runner, so the
    timeline still shows every plan that would have run.
    """

    proposal: Proposal
    verdicts: tuple[Verdict, ...]
    plan: Plan
    execute: bool

    def failed(self, outcome: Outcome) -> bool:
        """Meant to run and did not succeed: a step failed, or it never ran at all (the
        worker was full, or the same plan still running). A page that failed either way
        has not gone out."""
        return self.execute and not outcome.ok


class Pipeline(Protocol):
    def observe(self, obs: Observation) -> Sequence[Event]: ...

    def decide(self, now: float) -> tuple[Sequence[Event], Sequence[Decision]]:
        """Proposals due now, through the guard chain. Every proposal yields verdict events;
        an allowed one also a plan event and a Decision; a denied one no Decision."""

    def complete(self, decision: Decision, outcome: Outcome) -> Sequence[Event]: ...

    def give_back(self, lease: Lease, why: str) -> Sequence[Event]:
        """Release a lease no running plan holds (a node restart's, after the boot)."""

    def carry_over(self, previous: object) -> bool:
        """Take over the findings of the pipeline this one replaces (a reload); False
        when that cannot be done (the rules changed)."""

    def idle(self) -> bool:
        """Nothing is firing, so decide() would propose nothing (the driver may wait)."""
