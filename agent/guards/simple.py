"""The guards that need no more than the proposal and the configuration: trust, mode."""

from __future__ import annotations

from collections.abc import Mapping

from agent.guards.base import allow, deny
from agent.model import EMPTY, Proposal, Verdict
from agent.schema import MODES


class TrustGuard:
    """docs/architecture.md safety property 5: a kernel line written from userspace never acts."""

    name = "trust"

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.trusted:
            return allow(self.name, "evidence from the kernel, a log file, metrics or probes")
        return deny(self.name, "kernel line written from userspace: reported, never acted on")


class ModeGuard:
    """observe | dry-run | enforce, global (agent.mode) and per action ([guards.mode]).

    A per-action mode replaces the global one for that action, so `mode = "dry-run"` with
    `[guards.mode] page = "enforce"` pages for real and only plans the rest.
    An operator's own request (`nodewarden remediate`) is not subject to the mode: the
    operator chose dry-run or execute on the command line.
    """

    name = "mode"

    def __init__(self, mode: str, per_action: Mapping[str, str] = EMPTY) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.per_action = dict(per_action)

    def mode_for(self, action: str) -> str:
        return self.per_action.get(action, self.mode)

    def executes(self, proposal: Proposal) -> bool:
        return proposal.origin == "operator" or self.mode_for(proposal.action) == "enforce"

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.origin == "operator":
            return allow(self.name, "operator request (the command line says dry-run or execute)")
        mode = self.mode_for(proposal.action)
        where = f"[guards.mode] {proposal.action}" if proposal.action in self.per_action \
            else "agent.mode"
        if mode == "observe":
            return deny(self.name, f"observe ({where}): findings are reported, nothing is "
                                   "planned or run")
        if mode == "dry-run":
            return allow(self.name, f"dry-run ({where}): the plan is shown, nothing runs")
        return allow(self.name, f"enforce ({where})")
