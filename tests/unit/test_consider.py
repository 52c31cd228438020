"""The one way to consider a proposal (agent/pipeline/consider.py): leases are taken,
renewed and released there, a refused plan counts nothing, and the chain's "needs a
person" is a field, not a sentence.

The lease client is a stand-in that grants what it is asked (the coordinator comes with
issue 9); it records every call, so each test checks what the Decider asked of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.clock import FakeClock
from agent.config import Config
from agent.guards import Lease, build_chain
from agent.guards.settings import GuardSettings
from agent.model import Outcome, Proposal
from agent.pipeline.consider import RENEW_WHEN_LEFT, Decider
from agent.pipeline.contexts import action_contexts
from agent.state import SafetyState

T0 = 1_790_000_000.0
TTL = 900.0


@dataclass
class GrantingCoordinator:
    """Grants every lease for `ttl_s`; renews while `renewing`; records every call."""

    clock: FakeClock
    renewing: bool = True
    calls: list[tuple[str, str]] = field(default_factory=list)
    n: int = 0

    def describe(self) -> str:
        return "a test coordinator"

    def can_grant(self) -> bool:
        return True

    def acquire(self, action: str, subject: str, ttl_s: float) -> Lease | None:
        self.n += 1
        self.calls.append(("acquire", f"{action} {subject}"))
        return Lease(f"L{self.n}", action, subject, self.clock.now() + ttl_s)

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        self.calls.append(("renew", lease.id))
        if not self.renewing:
            return None
        return Lease(lease.id, lease.action, lease.subject, self.clock.now() + ttl_s)

    def release(self, lease: Lease) -> None:
        self.calls.append(("release", lease.id))


def decider(tmp_path: Path, coordinator: GrantingCoordinator) -> tuple[Decider, SafetyState]:
    config = Config()
    clock = coordinator.clock
    state = SafetyState(tmp_path, now=clock.now())
    chain = build_chain(GuardSettings(lease_ttl_s=TTL), mode="enforce", state=state,
                        lease_client=coordinator)
    contexts = action_contexts(config, clock, read_host=False)
    return Decider(chain, state, contexts), state


def restart(subject: str = "dovecot.service", *, disruptive: bool = True) -> Proposal:
    return Proposal(action="restart-service", subject=subject, problem="imap-down",
                    disruptive=disruptive, finding_subject="imap")


def test_a_lease_is_taken_for_a_disruptive_plan_and_given_back_when_it_has_run(
    tmp_path: Path,
) -> None:
    coordinator = GrantingCoordinator(FakeClock(T0))
    d, state = decider(tmp_path, coordinator)
    considered = d.consider(restart(), T0)
    assert considered.decision is not None and considered.decision.execute
    assert coordinator.calls == [("acquire", "restart-service dovecot.service")]
    assert [lease.id for lease in d.leases] == ["L1"]
    assert [e.action for e in state.executions()] == ["restart-service"]  # write-ahead
    d.finish(considered.decision, Outcome("restart-service", "dovecot.service", ok=True,
                                          executed=True), T0 + 5)
    assert coordinator.calls[-1] == ("release", "L1") and d.leases == ()


def test_a_node_restart_that_went_ahead_keeps_its_lease(tmp_path: Path) -> None:
    coordinator = GrantingCoordinator(FakeClock(T0))
    d, _state = decider(tmp_path, coordinator)
    proposal = Proposal(action="node-restart", subject="h1", problem="storage-hang",
                        disruptive=True, needs_lease=True, finding_subject="nfsd")
    considered = d.consider(proposal, T0)
    assert considered.decision is not None
    d.finish(considered.decision, Outcome("node-restart", "h1", ok=True, executed=True), T0)
    assert ("release", "L1") not in coordinator.calls  # it runs out while the node boots


def test_a_lease_near_its_end_is_renewed_while_the_plan_runs(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    coordinator = GrantingCoordinator(clock)
    d, _state = decider(tmp_path, coordinator)
    considered = d.consider(restart(), T0)
    assert considered.decision is not None
    clock.advance(TTL * (1 - RENEW_WHEN_LEFT) - 10)
    assert d.renew(clock.now()) == [] and ("renew", "L1") not in coordinator.calls
    clock.advance(20)
    assert d.renew(clock.now()) == []
    assert coordinator.calls[-1] == ("renew", "L1")
    (lease,) = d.leases
    assert lease.expires_at == clock.now() + TTL


def test_a_lease_that_cannot_be_renewed_is_said_and_dropped(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    coordinator = GrantingCoordinator(clock, renewing=False)
    d, _state = decider(tmp_path, coordinator)
    assert d.consider(restart(), T0).decision is not None
    clock.advance(TTL - 1)
    (note,) = d.renew(clock.now())
    assert note.kind == "note" and "could not be renewed" in note.fields["text"]
    assert d.leases == ()


def test_a_refused_plan_gives_its_lease_back_and_counts_nothing(tmp_path: Path) -> None:
    """A unit a restart may not touch: the chain (no preconditions here) allows, the
    remediation refuses; no execution is recorded and the lease goes back."""
    coordinator = GrantingCoordinator(FakeClock(T0))
    d, state = decider(tmp_path, coordinator)
    considered = d.consider(restart("reboot.target"), T0)
    assert considered.decision is None and considered.denied_by == ("plan",)
    assert coordinator.calls == [("acquire", "restart-service reboot.target"),
                                 ("release", "L1")]
    assert state.executions() == []


def test_a_guard_that_needs_a_person_says_so_in_a_field(tmp_path: Path) -> None:
    (tmp_path / "maintenance.json").write_text("{not json")
    d, _state = decider(tmp_path, GrantingCoordinator(FakeClock(T0)))
    considered = d.consider(restart(disruptive=False), T0)
    (verdict,) = [v for v in considered.verdicts if not v.allow]
    assert verdict.guard == "maintenance" and verdict.needs_person
    assert considered.page is not None and "maintenance flag cannot be read" in considered.page
