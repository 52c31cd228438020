"""The guard chain: every proposal passes every guard; any deny wins.

A guard answers one question about one proposal (`Guard.check(proposal, now) -> Verdict`)
and gets whatever state it needs through its constructor. `GuardChain.evaluate` asks the
guards in order and returns a ChainResult holding *every* verdict, so the operator sees
all the reasons at once, not just the first ("budget: 2 of 2..." and "lease: no
coordinator"). Two guards cost something and run only when every other guard allowed:
`costly` ones (preconditions run read-only commands) and the lease (asks the coordinator,
and a granted lease is capacity taken from the fleet).

Dry-run is expressed by `ChainResult.execute`: the mode guard *allows* a proposal in
dry-run mode (so its plan is made and shown) but `execute` is False; the caller hands the
plan to the dry-run runner instead of the real one. In dry-run no lease is taken; the
lease guard only says whether one could be.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agent.model import Lease, Proposal, Verdict

#: how a deny that needs a person ends, for the people who read it (Verdict.needs_person)
PAGE_A_PERSON = "page a person"


class Guard(Protocol):
    name: str

    def check(self, proposal: Proposal, now: float) -> Verdict: ...


class LeaseClient(Protocol):
    """What the coordinator will serve (issue 5). `acquire` None means no."""

    def describe(self) -> str:
        """Who grants leases, for reasons ("no coordinator", "coordinator at ...")."""

    def can_grant(self) -> bool:
        """Cheap, no side effects: could a lease be asked for at all (used in dry-run)?"""

    def acquire(self, action: str, subject: str, ttl_s: float) -> Lease | None: ...

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        """The same lease for `ttl_s` more, or None (it runs out at its old time)."""

    def release(self, lease: Lease) -> None: ...


class NoCoordinator:
    """The lease client until a coordinator exists: never grants a lease."""

    def describe(self) -> str:
        return "no coordinator"

    def can_grant(self) -> bool:
        return False

    def acquire(self, action: str, subject: str, ttl_s: float) -> Lease | None:
        return None

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        return None

    def release(self, lease: Lease) -> None:
        return None


def iso(t: float) -> str:
    """UTC time to the minute, as reasons print it: 2026-11-26T03:10Z (a time no calendar
    holds, from a configured window of 1e20 s, is said, never raised)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))
    except (OverflowError, ValueError, OSError):
        return "never" if t > 0 else "the beginning of time"


def span(seconds: float) -> str:
    """A duration as people say it: 45s, 10m, 2h, 24h, 1h30m."""
    s = round(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200 and s % 3600:
        return f"{s // 60}m"
    h, rest = divmod(s, 3600)
    return f"{h}h" if rest < 60 else f"{h}h{rest // 60}m"


def allow(guard: str, reason: str) -> Verdict:
    return Verdict(guard, True, f"{guard}: {reason}")


def deny(guard: str, reason: str, *, needs_person: bool = False) -> Verdict:
    """A deny; `needs_person` ones say so at the end of the reason too (for people)."""
    if needs_person:
        return Verdict(guard, False, f"{guard}: {reason}; {PAGE_A_PERSON}", needs_person=True)
    return Verdict(guard, False, f"{guard}: {reason}")


@dataclass(frozen=True)
class ChainResult:
    """Every verdict on one proposal, and what the caller should do with it.

    allowed   every guard allowed: make the plan
    execute   allowed and the mode lets it run for real; False = hand the plan to the
              dry-run runner (nothing runs)
    lease     the lease taken for it (release it after the action), or None
    page      a sentence when a guard says a person must be paged (flapping, broken
              history): the caller proposes a `page`
    """

    proposal: Proposal
    allowed: bool
    verdicts: tuple[Verdict, ...]
    execute: bool = False
    lease: Lease | None = None
    page: str | None = None

    @property
    def denied_by(self) -> tuple[str, ...]:
        return tuple(v.guard for v in self.verdicts if not v.allow)

    def summary(self) -> str:
        p = self.proposal
        what = f"{p.action} {p.subject}"
        if not self.allowed:
            reasons = "; ".join(v.reason for v in self.verdicts if not v.allow)
            return f"denied {what}: {reasons}"
        return f"allowed {what}" + ("" if self.execute else " (dry-run: plan only, nothing runs)")


class ExecutingGuard(Protocol):
    """The mode guard also says whether an allowed proposal runs for real."""

    name: str

    def check(self, proposal: Proposal, now: float) -> Verdict: ...

    def executes(self, proposal: Proposal) -> bool: ...


class LeaseGate(Protocol):
    """The chain's lease guard: the one place leases are taken, renewed and released."""

    name: str
    #: how long a lease is asked for (and renewed by)
    ttl_s: float

    def check(self, proposal: Proposal, now: float) -> Verdict: ...

    def acquire(self, proposal: Proposal, now: float) -> tuple[Verdict, Lease | None]: ...

    def renew(self, lease: Lease, now: float) -> Lease | None: ...

    def release(self, lease: Lease) -> None: ...


@runtime_checkable
class PageFold(Protocol):
    """The guard that folds repeated pages (agent/guards/stateful.py PageFoldGuard)."""

    name: str

    def check(self, proposal: Proposal, now: float) -> Verdict: ...

    def annotate(self, proposal: Proposal) -> str: ...

    def sent(self, proposal: Proposal, now: float) -> None: ...

    def failed(self, proposal: Proposal) -> None: ...


class GuardChain:
    """Ask every guard; any deny wins; all verdicts kept (see the module docstring)."""

    def __init__(
        self,
        mode: ExecutingGuard,
        guards: Sequence[Guard],
        *,
        costly: Sequence[Guard] = (),
        lease: LeaseGate | None = None,
    ) -> None:
        self.mode = mode
        self.guards = tuple(guards)
        self.costly = tuple(costly)
        self.lease = lease

    @property
    def fold(self) -> PageFold | None:
        """The chain's page folding, when it has one (the driver reports pages sent)."""
        return next((g for g in self.guards if isinstance(g, PageFold)), None)

    @property
    def names(self) -> list[str]:
        names = [self.mode.name] + [g.name for g in (*self.guards, *self.costly)]
        return names + ([self.lease.name] if self.lease else [])

    def evaluate(self, proposal: Proposal, now: float) -> ChainResult:
        verdicts = [self.mode.check(proposal, now)]
        verdicts += [g.check(proposal, now) for g in self.guards]
        execute = self.mode.executes(proposal)
        lease: Lease | None = None
        if all(v.allow for v in verdicts):
            verdicts += [g.check(proposal, now) for g in self.costly]
        if self.lease is not None and all(v.allow for v in verdicts):
            if execute:
                verdict, lease = self.lease.acquire(proposal, now)
            else:
                verdict = self.lease.check(proposal, now)
            verdicts.append(verdict)
        allowed = all(v.allow for v in verdicts)
        page = next((v.reason for v in verdicts if not v.allow and v.needs_person), None)
        return ChainResult(proposal, allowed, tuple(verdicts), execute and allowed, lease, page)
