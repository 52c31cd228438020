"""Guards that read the durable SafetyState: maintenance, cooldown, budget, flapping,
approval. Each is built with the state (and its settings) and only reads it; the state is
written by `SafetyState.record_execution` (write-ahead, just before a real run),
`record_fix` (the policy), `approve` and `set_maintenance` (operator commands)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.guards.base import allow, deny, iso, span
from agent.guards.windows import Window, describe_windows
from agent.model import Proposal, Verdict
from agent.state import SafetyState


class MaintenanceGuard:
    """The maintenance flag stops automatic actions (pages still go out); configured
    windows confine disruptive actions. An operator's own request passes."""

    name = "maintenance"

    def __init__(self, state: SafetyState, disruptive_windows: Sequence[Window] = ()) -> None:
        self.state = state
        self.windows = tuple(disruptive_windows)

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.origin == "operator":
            return allow(self.name, "operator request")
        flag = self.state.maintenance(now)
        if flag is not None and proposal.action != "page":
            by = f" by {flag.by}" if flag.by else ""
            return deny(self.name, f"on until {iso(flag.until)} (set{by} at {iso(flag.since)}: "
                                   f"{flag.reason}); automatic actions wait")
        if proposal.disruptive and self.windows:
            inside = next((w for w in self.windows if w.contains(now)), None)
            if inside is None:
                return deny(self.name, f"{proposal.action} is disruptive and allowed only in "
                            f"{describe_windows(self.windows)} (UTC); now {iso(now)}")
            return allow(self.name, f"inside window {inside.text} (UTC)")
        if flag is not None:
            return allow(self.name, f"on until {iso(flag.until)}, but a page always goes out")
        return allow(self.name, "off")


class CooldownGuard:
    """No second run of the same action on the same subject too soon."""

    name = "cooldown"

    def __init__(self, state: SafetyState, default_s: float,
                 per_action: Mapping[str, float] | None = None) -> None:
        self.state = state
        self.default_s = default_s
        self.per_action = dict(per_action or {})

    def check(self, proposal: Proposal, now: float) -> Verdict:
        cooldown = self.per_action.get(proposal.action, self.default_s)
        if proposal.origin == "operator":
            return allow(self.name, "operator request")
        runs = [r for r in self.state.executions(action=proposal.action,
                                                 subject=proposal.subject, since=now - cooldown)
                if r.t > now - cooldown]
        if not runs:
            return allow(self.name, f"{proposal.action} {proposal.subject} has not run in the "
                                    f"last {span(cooldown)}")
        last = max(r.t for r in runs)
        return deny(self.name, f"{proposal.action} {proposal.subject} ran {span(now - last)} ago "
                               f"at {iso(last)}; next allowed at {iso(last + cooldown)} "
                               f"(cooldown {span(cooldown)})")


class BudgetGuard:
    """At most N executions of an action per window, counted from the persisted history
    (DESIGN safety property 3), for operator requests too. A broken history denies every
    disruptive action until an operator clears it."""

    name = "budget"

    def __init__(self, state: SafetyState, budgets: Mapping[str, tuple[int, float]]) -> None:
        self.state = state
        self.budgets = dict(budgets)

    def check(self, proposal: Proposal, now: float) -> Verdict:
        fault = self.state.history_fault
        if fault is not None and (proposal.disruptive or proposal.action == "node-restart"):
            return deny(self.name, f"{fault.reason} (since {iso(fault.since)}); disruptive "
                        "actions are denied until an operator clears it "
                        "(nodewarden maintenance clear-history); page a person")
        budget = self.budgets.get(proposal.action)
        if budget is None:
            return allow(self.name, f"no budget for {proposal.action}")
        limit, window = budget
        runs = sorted(r.t for r in self.state.executions(action=proposal.action,
                                                          since=now - window)
                      if r.t > now - window)  # "next allowed at" is allowed
        if len(runs) < limit:
            return allow(self.name, f"{len(runs)} of {limit} {proposal.action} in the last "
                                    f"{span(window)}")
        next_at = runs[len(runs) - limit] + window
        return deny(self.name, f"{len(runs)} of {limit} {proposal.action} in the last "
                               f"{span(window)} (next allowed at {iso(next_at)})")


class FlappingGuard:
    """The same problem back after K fixes within a window: stop acting, page a person.
    A page itself is never held back by flapping."""

    name = "flapping"

    def __init__(self, state: SafetyState, max_fixes: int, window_s: float) -> None:
        self.state = state
        self.max_fixes = max_fixes
        self.window_s = window_s

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.action == "page" or proposal.origin == "operator":
            return allow(self.name, "does not apply to pages and operator requests")
        subject = proposal.finding_subject or proposal.subject
        fixes = self.state.fixes(proposal.problem, subject, since=now - self.window_s)
        if len(fixes) < self.max_fixes:
            return allow(self.name, f"{proposal.problem} {subject} fixed {len(fixes)} times in "
                                    f"the last {span(self.window_s)} (limit {self.max_fixes})")
        return deny(self.name, f"{proposal.problem} {subject} came back after {len(fixes)} fixes "
                    f"in the last {span(self.window_s)} (limit {self.max_fixes}): stop acting, "
                    "page a person")


class ApprovalGuard:
    """Rungs with needs_approval wait for `nodewarden approve ACTION --subject S`."""

    name = "approval"

    def __init__(self, state: SafetyState) -> None:
        self.state = state

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if not proposal.needs_approval:
            return allow(self.name, "not required")
        if proposal.origin == "operator":
            return allow(self.name, "operator request")
        found = self.state.approval(proposal.action, proposal.subject, now)
        if found is None:
            return deny(self.name, f"{proposal.action} {proposal.subject} needs an operator's "
                        f"approval: nodewarden approve {proposal.action} --subject "
                        f"{proposal.subject}")
        by = f" by {found.by}" if found.by else ""
        return allow(self.name, f"approved{by} at {iso(found.granted_at)}, valid until "
                                f"{iso(found.expires_at)}")
