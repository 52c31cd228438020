"""What each action may know when it is planned, and the chain that judges it:
one ActionContext per action (its `[actions.NAME]` settings, the host's never-block
addresses) and the standard guard chain with the action preconditions."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType

from agent.clock import Clock
from agent.config import Config
from agent.guards import GuardChain, LeaseClient, build_chain
from agent.guards.costly import PreconditionGuard
from agent.model import Proposal, Step, StepResult, Verdict
from agent.state import SafetyState
from remediations import ActionContext, ReadOnlyRunner, UnknownAction, load

#: the longest a read-only precondition check may take (decide() runs on the daemon's
#: loop, which pings the watchdog every WatchdogSec/2 = 15 s)
PRECONDITION_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class CappedRunner:
    """A read-only runner whose steps get at most `cap_s` each, whatever they ask for."""

    runner: ReadOnlyRunner
    cap_s: float

    def run(self, step: Step) -> StepResult:
        return self.runner.run(dataclasses.replace(step, timeout_s=min(step.timeout_s,
                                                                         self.cap_s)))


class ActionPreconditions:
    """The preconditions guard with each action's own `[actions.NAME]` settings."""

    name = "preconditions"

    def __init__(self, contexts: ActionContexts) -> None:
        self.contexts = contexts

    def check(self, proposal: Proposal, now: float) -> Verdict:
        return PreconditionGuard(self.contexts.for_action(proposal.action)).check(proposal, now)


#: how old the host's never-block addresses may be when a block is planned
NEVER_BLOCK_MAX_AGE_S = 30.0


class NeverBlockCache:
    """The addresses block-addresses must never block (agent/sources/hostaddrs.py), read
    again when older than NEVER_BLOCK_MAX_AGE_S (a new address or route is seen soon)."""

    def __init__(self, clock: Clock, read: Callable[[], tuple[tuple[str, str], ...]]) -> None:
        self.clock = clock
        self.read = read
        self._value: tuple[tuple[str, str], ...] = ()
        self._at: float | None = None

    def get(self) -> tuple[tuple[str, str], ...]:
        now = self.clock.now()
        if self._at is None or not 0 <= now - self._at < NEVER_BLOCK_MAX_AGE_S:
            self._value, self._at = self.read(), now
        return self._value


@dataclasses.dataclass(frozen=True)
class ActionContexts:
    """One ActionContext per action: the same host facts, that action's settings."""

    base: ActionContext
    per_action: Mapping[str, Mapping[str, object]]
    #: the host's own addresses, gateways, resolvers, filers (None: a pure replay)
    never_block: NeverBlockCache | None = None

    def for_action(self, action: str) -> ActionContext:
        """The context `action` plans with: its `[actions.NAME]` values over its declared
        defaults (Remediation.settings), the host's never-block addresses for a block."""
        settings = self.per_action.get(action, MappingProxyType({}))
        with contextlib.suppress(UnknownAction, ImportError):  # its plan is refused anyway
            settings = load(action).settings(settings)
        ctx = dataclasses.replace(self.base, settings=settings)
        if action == "block-addresses" and self.never_block is not None:
            ctx = dataclasses.replace(ctx, never_block=self.never_block.get())
        return ctx


def action_contexts(
    config: Config, clock: Clock, runner: ReadOnlyRunner | None = None,
    agent_pid: int | None = None, *, read_host: bool = True,
) -> ActionContexts:
    """Contexts for every action; `read_host` False for pure replays (`simulate`), which
    never read the machine they run on."""
    base = ActionContext(
        hostname=config.agent.hostname, state_dir=config.agent.state_dir,
        agent_pid=os.getpid() if agent_pid is None else agent_pid, clock=clock,
        runner=runner, protected_units=config.actions.protected_units,
    )
    never_block = None
    if read_host:
        from agent.sources.hostaddrs import read_never_block

        never_block = NeverBlockCache(clock, read_never_block)
    return ActionContexts(base, config.actions.per_action, never_block)


def guard_chain(
    config: Config, state: SafetyState, contexts: ActionContexts, *,
    lease_client: LeaseClient, check_preconditions: bool, mode: str | None = None,
) -> GuardChain:
    """build_chain's standard chain, with per-action settings for the preconditions."""
    chain = build_chain(config.guards, mode=mode or config.agent.mode, state=state,
                        lease_client=lease_client)
    costly = [ActionPreconditions(contexts)] if check_preconditions else []
    return GuardChain(chain.mode, chain.guards, costly=costly, lease=chain.lease)
