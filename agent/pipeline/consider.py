"""One way to consider a proposal: the guard chain, the plan, the write-ahead record, and,
once the driver has run the plan, its outcome and its lease.

The daemon's pipeline, `nodewarden remediate` and `simulate` all go through a Decider, so
an operator's request meets the same guards, and leaves the same audit records, as the
agent's own:

    considered = decider.consider(proposal, now)     # verdict and plan events
    if considered.decision is not None:
        outcome = executor.run(considered.decision.plan)   # the driver: worker, inline
        events = decider.finish(considered.decision, outcome, now)
    events = decider.renew(now)                      # each cycle while plans run

Leases are taken (by the chain's lease gate, only when the plan will execute), renewed
while the plan runs, and released when it has run, here and nowhere else: the
coordinator's client plugs into the chain (agent/guards/base.py LeaseClient). A plan that
runs under a lease is made with it (ActionContext.lease), so a node restart's intent
record carries it. That lease is kept when the restart went ahead: it covers the time
the node takes to come back, and after the boot the daemon hands it to `give_back` once
the intent is reconciled (agent/pipeline/intents.py).

Order: the chain first (every verdict, a person paged when a guard asks), then the plan
(a refused plan is a "plan" deny: nothing counted, the lease given back), then the
write-ahead record when it will execute: budgets and cooldowns count it even if the
process dies while it runs; if it cannot be recorded it does not run and a person is
paged, except a page, which goes out all the same and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

from agent.guards import GuardChain
from agent.guards.base import PAGE_A_PERSON, ChainResult
from agent.model import Lease, Outcome, Plan, Proposal, Verdict
from agent.pipeline.api import Decision, Event
from agent.pipeline.contexts import ActionContexts
from agent.pipeline.events import note_event, outcome_event, plan_event, verdict_event
from agent.state import SafetyState, StateError
from remediations import InvalidParams, UnknownAction, build_plan, target_of

#: a lease is renewed when less than this part of its time is left
RENEW_WHEN_LEFT = 1 / 3


def with_page_defaults(p: Proposal) -> Proposal:
    """A page names the problem and says why, unless its proposer gave its own params."""
    if p.action != "page":
        return p
    params = {"problem": p.problem, "message": p.reason or f"{p.problem} {p.subject}"}
    params.update(p.params)
    return dataclasses.replace(p, params=MappingProxyType(params))


def with_message(p: Proposal, extra: str) -> Proposal:
    """A page proposal with `extra` added to its message."""
    if not extra:
        return p
    params = dict(p.params)
    params["message"] = (params.get("message", "") + extra)[:480]
    return dataclasses.replace(p, params=MappingProxyType(params))


@dataclass(frozen=True)
class Considered:
    """What became of one proposal: its events, and a Decision when it may go ahead."""

    #: the proposal as judged (page defaults and its target filled in)
    proposal: Proposal
    events: tuple[Event, ...]
    verdicts: tuple[Verdict, ...]
    decision: Decision | None = None
    #: the plan, even when denied (what would have run); None when it was refused
    plan: Plan | None = None
    denied_by: tuple[str, ...] = ()
    #: why a person must be paged (a guard asked, or the execution could not be recorded)
    page: str | None = None


class Decider:
    """The guard chain, plans, the write-ahead record and leases for one driver."""

    def __init__(self, chain: GuardChain, state: SafetyState, contexts: ActionContexts) -> None:
        self.chain = chain
        self.state = state
        self.contexts = contexts
        self._leases: dict[tuple[str, str, str, str], Lease] = {}

    # ------------------------------------------------------------------ consider
    def consider(self, proposal: Proposal, now: float) -> Considered:
        proposal = with_page_defaults(proposal)
        if not proposal.target:
            proposal = dataclasses.replace(
                proposal, target=target_of(proposal.action, proposal.subject, proposal.params))
        first = self._plan(proposal)
        result = self.chain.evaluate(proposal, now)
        events = [verdict_event(proposal, v, now) for v in result.verdicts]
        if not result.allowed:
            return Considered(proposal, tuple(events), result.verdicts,
                              plan=None if isinstance(first, str) else first,
                              denied_by=result.denied_by, page=result.page)
        if isinstance(first, str):
            return self._refused(proposal, first, result, events, now)
        judged = proposal
        fold = self.chain.fold
        if proposal.action == "page" and fold is not None:
            proposal = with_message(proposal, fold.annotate(proposal))
        if result.execute:
            unrecorded = self._write_ahead(proposal, now)
            if unrecorded and proposal.action != "page":
                return self._unrecorded(proposal, unrecorded, result, events, now)
            if unrecorded:
                proposal = with_message(proposal, f" [this page could not be recorded "
                                                  f"({unrecorded}); it goes out anyway]")
                events.append(note_event(f"page {proposal.subject} could not be recorded "
                                         f"({unrecorded}); it goes out anyway", now))
        # planned again for a page's new message, or with the lease it runs under
        plan = first if proposal is judged and result.lease is None else self._plan(
            proposal, result.lease)
        assert not isinstance(plan, str)  # the same action and parameters planned above
        if proposal.action == "page" and fold is not None:
            fold.sent(proposal, now)
        events.append(plan_event(proposal, plan, result.execute, now))
        verdicts = (*result.verdicts, Verdict("plan", True, f"plan: {plan.summary}"))
        decision = Decision(proposal, verdicts, plan, result.execute)
        if result.lease is not None:
            self._leases[self.key(decision)] = result.lease
        return Considered(proposal, tuple(events), verdicts, decision, plan)

    def _plan(self, proposal: Proposal, lease: Lease | None = None) -> Plan | str:
        """The plan (under `lease`, when it runs under one), or why the remediation
        refuses it."""
        ctx = self.contexts.for_action(proposal.action)
        if lease is not None:
            ctx = dataclasses.replace(ctx, lease=lease)
        try:
            return build_plan(proposal.action, proposal.subject, proposal.params, ctx)
        except (InvalidParams, UnknownAction, ImportError) as exc:
            return f"plan: {proposal.action} refuses: {exc}"[:400]

    def _refused(self, proposal: Proposal, why: str, result: ChainResult,
                 events: list[Event], now: float) -> Considered:
        verdict = Verdict("plan", False, why)
        events.append(verdict_event(proposal, verdict, now))
        self._release(result.lease)
        return Considered(proposal, tuple(events), (*result.verdicts, verdict),
                          denied_by=("plan",))

    def _write_ahead(self, proposal: Proposal, now: float) -> str:
        """Record the execution before it runs; why it could not be ("" = recorded)."""
        try:
            self.state.record_execution(
                proposal.action, proposal.subject, now, problem=proposal.problem,
                finding_subject=proposal.finding_subject, origin=proposal.origin,
                target=proposal.acted_on)
        except StateError as exc:
            return str(exc) or type(exc).__name__
        return ""

    def _unrecorded(self, proposal: Proposal, why: str, result: ChainResult,
                    events: list[Event], now: float) -> Considered:
        reason = f"cannot record the execution, so it does not run: {why}"
        verdict = Verdict("budget", False, f"budget: {reason}; {PAGE_A_PERSON}",
                          needs_person=True)
        events.append(verdict_event(proposal, verdict, now))
        self._release(result.lease)
        return Considered(proposal, tuple(events), (*result.verdicts, verdict),
                          denied_by=("budget",),
                          page=f"{proposal.action} {proposal.subject} denied: {reason}")

    # ------------------------------------------------------------------ after the run
    def finish(self, decision: Decision, outcome: Outcome, now: float) -> list[Event]:
        """The outcome event; the lease given back (kept after a node restart went ahead);
        a page that did not go out is not counted as sent (it is tried again)."""
        lease = self._leases.pop(self.key(decision), None)
        keep = decision.plan.action == "node-restart" and outcome.executed and outcome.ok
        if lease is not None and not keep:
            self._release(lease)
        events = [outcome_event(decision, outcome, now)]
        if decision.plan.action == "page" and decision.failed(outcome):
            fold = self.chain.fold
            if fold is not None:
                fold.failed(decision.proposal)
            events.append(note_event(f"page {decision.plan.subject} FAILED: "
                                     f"{outcome.detail}; it will be tried again", now))
        return events

    def renew(self, now: float) -> list[Event]:
        """Renew the leases of plans still running that are close to their end; a lease
        that cannot be renewed is said (the plan's own step timeouts still bound it)."""
        gate = self.chain.lease
        events: list[Event] = []
        if gate is None:
            return events
        for key, lease in list(self._leases.items()):
            if lease.expires_at - now > gate.ttl_s * RENEW_WHEN_LEFT:
                continue
            renewed = gate.renew(lease, now)
            if renewed is None:
                events.append(note_event(f"lease {lease.id} for {lease.action} "
                                         f"{lease.subject} could not be renewed; it ends at "
                                         f"its time", now, lease=lease.id))
                self._leases.pop(key)
            else:
                self._leases[key] = renewed
        return events

    def give_back(self, lease: Lease, why: str, now: float) -> list[Event]:
        """Release a lease that no running plan holds any more: a node restart's, after
        the boot, once its intent is reconciled (`why` says which)."""
        self._release(lease)
        return [note_event(f"lease {lease.id} for {lease.action} {lease.subject} given back "
                           f"to the coordinator at {lease.granted_by or 'its coordinator'}: "
                           f"{why}", now, lease=lease.id, released=True)]

    def _release(self, lease: Lease | None) -> None:
        if lease is not None and self.chain.lease is not None:
            self.chain.lease.release(lease)

    @property
    def leases(self) -> tuple[Lease, ...]:
        """The leases held for plans that have not finished."""
        return tuple(self._leases.values())

    @staticmethod
    def key(d: Decision) -> tuple[str, str, str, str]:
        return (d.plan.action, d.plan.subject, d.proposal.problem, d.proposal.finding_subject)
