"""Assemble the guard chain the daemon, `remediate` and `simulate` all use.

    state = SafetyState(config.agent.state_dir, now=clock.now())
    chain = build_chain(config.guards, mode=config.agent.mode, state=state,
                        ctx=action_context, lease_client=NoCoordinator())
    result = chain.evaluate(proposal, clock.now())

Order of verdicts: mode, trust, maintenance, cooldown, budget, flapping, fold (pages),
approval, then preconditions (only with a ctx) and lease, which run only if all before
them allowed.
"""

from __future__ import annotations

from agent.guards.base import GuardChain, LeaseClient, NoCoordinator
from agent.guards.costly import LeaseGuard, PreconditionGuard
from agent.guards.settings import GuardSettings
from agent.guards.simple import ModeGuard, TrustGuard
from agent.guards.stateful import (
    ApprovalGuard,
    BudgetGuard,
    CooldownGuard,
    FlappingGuard,
    MaintenanceGuard,
    PageFoldGuard,
)
from agent.state import SafetyState
from remediations import ActionContext


def build_chain(
    settings: GuardSettings,
    *,
    mode: str,
    state: SafetyState,
    ctx: ActionContext | None = None,
    lease_client: LeaseClient | None = None,
) -> GuardChain:
    """The standard chain. Without `ctx`, preconditions are not checked (pure replays)."""
    return GuardChain(
        ModeGuard(mode, settings.action_modes),
        [
            TrustGuard(),
            MaintenanceGuard(state, settings.disruptive_windows),
            CooldownGuard(state, settings.cooldown_s, settings.cooldowns),
            BudgetGuard(state, settings.budgets),
            FlappingGuard(state, settings.flapping_max_fixes, settings.flapping_window_s),
            PageFoldGuard(state, settings.page_fold_s),
            ApprovalGuard(state),
        ],
        costly=[PreconditionGuard(ctx)] if ctx is not None else [],
        lease=LeaseGuard(lease_client or NoCoordinator(), settings.lease_ttl_s),
    )
