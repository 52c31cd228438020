"""Guards that cost something: the action's own preconditions (may run read-only
commands) and the lease (asks the coordinator). GuardChain runs them last, and only when
every other guard allowed."""

from __future__ import annotations

from agent.guards.base import LeaseClient, allow, deny, iso
from agent.model import Lease, Proposal, Verdict
from remediations import ActionContext, UnknownAction, load


class PreconditionGuard:
    """Asks the remediation itself: `preconditions(subject, params, ctx)` -> reasons."""

    name = "preconditions"

    def __init__(self, ctx: ActionContext) -> None:
        self.ctx = ctx

    def check(self, proposal: Proposal, now: float) -> Verdict:
        try:
            module = load(proposal.action)
        except UnknownAction:
            return deny(self.name, f"no remediation module provides {proposal.action!r} "
                                   "(not installed)")
        except ImportError as exc:
            return deny(self.name, f"the remediation module for {proposal.action} is broken: "
                                   f"{exc}")
        try:
            reasons = module.preconditions(proposal.subject, proposal.params, self.ctx)
        except Exception as exc:  # a plugin's bug must not crash the daemon
            return deny(self.name, f"{proposal.action} preconditions failed: "
                                   f"{type(exc).__name__}: {exc}"[:300])
        if reasons:
            return deny(self.name, "; ".join(reasons))
        return allow(self.name, f"{proposal.action} {proposal.subject}: all met")


class LeaseGuard:
    """Disruptive or needs_lease actions need a lease from the coordinator; no answer
    means no (docs/architecture.md safety property 2). In dry-run it only asks `can_grant()`."""

    name = "lease"

    def __init__(self, client: LeaseClient, ttl_s: float) -> None:
        self.client = client
        self.ttl_s = ttl_s

    @staticmethod
    def needed(proposal: Proposal) -> bool:
        return proposal.needs_lease or proposal.disruptive

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if not self.needed(proposal):
            return allow(self.name, "not needed")
        if self.client.can_grant():
            return allow(self.name, f"would be requested from {self.client.describe()} "
                                    f"when executing (ttl {self.ttl_s:g}s)")
        return deny(self.name, f"{proposal.action} needs a lease and none can be granted "
                               f"({self.client.describe()})")

    def acquire(self, proposal: Proposal, now: float) -> tuple[Verdict, Lease | None]:
        if not self.needed(proposal):
            return allow(self.name, "not needed"), None
        lease = self.client.acquire(proposal.action, proposal.subject, self.ttl_s)
        if lease is None:
            return deny(self.name, f"{proposal.action} needs a lease and none was granted "
                                   f"({self.client.describe()})"), None
        return allow(self.name, f"lease {lease.id} until {iso(lease.expires_at)}"), lease

    def renew(self, lease: Lease, now: float) -> Lease | None:
        """Ask for `ttl_s` more before the lease runs out (a plan still running)."""
        return self.client.renew(lease, self.ttl_s)

    def release(self, lease: Lease) -> None:
        self.client.release(lease)
