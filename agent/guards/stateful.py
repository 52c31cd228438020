"""Guards that read the durable SafetyState: maintenance, cooldown, budget, flapping,
approval, and the folding of pages. Each is built with the state (and its settings) and
only reads it; the state is written by `SafetyState.record_execution` (write-ahead, just
before a real run), `record_fix` (the policy), `approve` and `set_maintenance` (operator
commands).

Pages always go out: no budget applies to a page and no cooldown holds it back; a page
about the same problem and subject as one that went out less than `fold_s` ago is folded
into it instead (PageFoldGuard), and the next page that goes out says how many were.
Cooldowns and flapping are keyed on the proposal's target ("dovecot" and "dovecot.service"
are one unit); budgets on the action and the problem (one problem's noise cannot spend
another's), or on the action alone for host-wide budgets (node-restart:
docs/architecture.md safety property 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.guards.base import allow, deny, iso, span
from agent.guards.windows import Window, describe_windows
from agent.model import Budget, Proposal, Verdict
from agent.state import SafetyState

PAGE = "page"


class MaintenanceGuard:
    """The maintenance flag stops automatic actions (pages still go out); configured
    windows confine disruptive actions. An operator's own request passes. A maintenance
    file that cannot be read counts as maintenance on, and asks for a person."""

    name = "maintenance"

    def __init__(self, state: SafetyState, disruptive_windows: Sequence[Window] = ()) -> None:
        self.state = state
        self.windows = tuple(disruptive_windows)

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.origin == "operator":
            return allow(self.name, "operator request")
        if proposal.action == PAGE:
            return allow(self.name, "a page always goes out")
        fault = self.state.maintenance_fault
        if fault is not None:
            return deny(self.name, f"the maintenance flag cannot be read ({fault}): it counts "
                        "as on until an operator sets it (nodewarden maintenance on|off)",
                        needs_person=True)
        flag = self.state.maintenance(now)
        if flag is not None:
            by = f" by {flag.by}" if flag.by else ""
            return deny(self.name, f"on until {iso(flag.until)} (set{by} at {iso(flag.since)}: "
                                   f"{flag.reason}); automatic actions wait")
        if proposal.disruptive and self.windows:
            inside = next((w for w in self.windows if w.contains(now)), None)
            if inside is None:
                return deny(self.name, f"{proposal.action} is disruptive and allowed only in "
                            f"{describe_windows(self.windows)} (UTC); now {iso(now)}")
            return allow(self.name, f"inside window {inside.text} (UTC)")
        return allow(self.name, "off")


class CooldownGuard:
    """No second run of the same action on the same target too soon (pages fold instead)."""

    name = "cooldown"

    def __init__(self, state: SafetyState, default_s: float,
                 per_action: Mapping[str, float] | None = None) -> None:
        self.state = state
        self.default_s = default_s
        self.per_action = dict(per_action or {})

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.origin == "operator":
            return allow(self.name, "operator request")
        if proposal.action == PAGE:
            return allow(self.name, "pages are folded, not cooled down")
        cooldown = self.per_action.get(proposal.action, self.default_s)
        target = proposal.acted_on
        runs = [r for r in self.state.executions(action=proposal.action, target=target,
                                                 since=now - cooldown)
                if r.t > now - cooldown]
        if not runs:
            return allow(self.name, f"{proposal.action} {target} has not run in the "
                                    f"last {span(cooldown)}")
        last = max(r.t for r in runs)
        return deny(self.name, f"{proposal.action} {target} ran {span(now - last)} ago "
                               f"at {iso(last)}; next allowed at {iso(last + cooldown)} "
                               f"(cooldown {span(cooldown)})")

    def left(self, now: float) -> list[CooldownLeft]:
        """The cooldowns running now (`nodewarden status`), one per execution."""
        longest = max([self.default_s, *self.per_action.values()])
        out = []
        for e in self.state.executions(since=now - longest):
            if e.action == PAGE:
                continue  # pages fold, they do not cool down
            until = e.t + self.per_action.get(e.action, self.default_s)
            if until > now:
                out.append(CooldownLeft(e.action, e.subject, e.target, e.t, until))
        return out


@dataclass(frozen=True)
class CooldownLeft:
    """A cooldown running now: `action` on `target` ran at `ran_at`, again from `until`."""

    action: str
    subject: str
    target: str
    ran_at: float
    until: float




class BudgetGuard:
    """At most N executions of an action per window, counted from the persisted history
    (docs/architecture.md safety property 3), for operator requests too. Pages are never budgeted. A
    broken history denies every other action until an operator clears it."""

    name = "budget"

    def __init__(self, state: SafetyState, budgets: Mapping[str, Budget]) -> None:
        self.state = state
        self.budgets = dict(budgets)

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.action == PAGE:
            return allow(self.name, "a page always goes out (never budgeted)")
        fault = self.state.history_fault
        if fault is not None:
            return deny(self.name, f"{fault.reason} (since {iso(fault.since)}); actions are "
                        "denied until an operator clears it (nodewarden maintenance "
                        "clear-history)", needs_person=True)
        budget = self.budgets.get(proposal.action)
        if budget is None:
            return allow(self.name, f"no budget for {proposal.action}")
        problem = None if budget.per == "host" else proposal.problem
        where = "on this host" if problem is None else f"for {problem}"
        runs = sorted(r.t for r in self.state.executions(action=proposal.action,
                                                          problem=problem,
                                                          since=now - budget.window_s)
                      if r.t > now - budget.window_s)  # "next allowed at" is allowed
        if len(runs) < budget.max:
            return allow(self.name, f"{len(runs)} of {budget.max} {proposal.action} {where} "
                                    f"in the last {span(budget.window_s)}")
        next_at = runs[len(runs) - budget.max] + budget.window_s if budget.max else None
        when = f" (next allowed at {iso(next_at)})" if next_at is not None else ""
        return deny(self.name, f"{len(runs)} of {budget.max} {proposal.action} {where} in "
                               f"the last {span(budget.window_s)}{when}")

    def left(self, now: float) -> list[BudgetLeft]:
        """How much of each budget is used now (`nodewarden status`): one line per action
        and problem that ran in its window (per host: one per action), and one for each
        budgeted action that did not run at all."""
        out = []
        for action, budget in sorted(self.budgets.items()):
            buckets: dict[str | None, list[float]] = {}
            for r in self.state.executions(action=action, since=now - budget.window_s):
                if r.t > now - budget.window_s:
                    buckets.setdefault(None if budget.per == "host" else r.problem,
                                       []).append(r.t)
            for problem, times in sorted(buckets.items(), key=lambda kv: kv[0] or "") or [
                    (None, [])]:
                runs = sorted(times)
                exhausted = len(runs) >= budget.max
                next_at = (runs[len(runs) - budget.max] + budget.window_s
                           if exhausted and budget.max else now)
                out.append(BudgetLeft(action, budget, problem, len(runs), next_at, exhausted))
        return out


@dataclass(frozen=True)
class BudgetLeft:
    """One budget as used now: `used` of `budget.max` runs of `action` (for `problem`)."""

    action: str
    budget: Budget
    problem: str | None
    used: int
    next_allowed: float
    exhausted: bool


class FlappingGuard:
    """The same problem back after K fixes within a window: stop acting, page a person.
    Fixes count for the same finding or the same target. A page itself is never held
    back by flapping."""

    name = "flapping"

    def __init__(self, state: SafetyState, max_fixes: int, window_s: float) -> None:
        self.state = state
        self.max_fixes = max_fixes
        self.window_s = window_s

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.action == PAGE or proposal.origin == "operator":
            return allow(self.name, "does not apply to pages and operator requests")
        subject = proposal.finding_subject or proposal.subject
        fixes = self.state.fixes(proposal.problem, subject, target=proposal.acted_on,
                                 since=now - self.window_s)
        if len(fixes) < self.max_fixes:
            return allow(self.name, f"{proposal.problem} {subject} fixed {len(fixes)} times in "
                                    f"the last {span(self.window_s)} (limit {self.max_fixes})")
        return deny(self.name, f"{proposal.problem} {subject} came back after {len(fixes)} fixes "
                    f"in the last {span(self.window_s)} (limit {self.max_fixes}): stop acting",
                    needs_person=True)


class PageFoldGuard:
    """One page per problem and subject per `fold_s`: a repeat is folded (counted) into
    the page that went out, and the next page that goes out says how many were folded.

    What went out is remembered here (seeded from the executed pages in the history, so
    an agent restart does not re-page); `sent()` is called by the driver for each page
    it hands to the executor, and `annotate()` adds the count to its message."""

    name = "fold"

    def __init__(self, state: SafetyState, fold_s: float) -> None:
        self.state = state
        self.fold_s = fold_s
        self._sent: dict[tuple[str, str], float] = {}
        self._before: dict[tuple[str, str], float | None] = {}
        self._folded: dict[tuple[str, str], int] = {}
        self._last_fold: dict[tuple[str, str], float] = {}
        self._seeded = False

    @staticmethod
    def key(proposal: Proposal) -> tuple[str, str]:
        return (proposal.problem, proposal.finding_subject or proposal.subject)

    def _last_sent(self, key: tuple[str, str], now: float) -> float | None:
        if not self._seeded:
            self._seeded = True
            for e in self.state.executions(action=PAGE, since=now - self.fold_s):
                k = (e.problem, e.finding_subject or e.subject)
                self._sent[k] = max(self._sent.get(k, e.t), e.t)
        return self._sent.get(key)

    def check(self, proposal: Proposal, now: float) -> Verdict:
        if proposal.action != PAGE or proposal.origin == "operator":
            return allow(self.name, "not a page" if proposal.action != PAGE
                         else "operator request")
        key = self.key(proposal)
        last = self._last_sent(key, now)
        if last is None or now - last >= self.fold_s:
            return allow(self.name, f"no page for {key[0]} {key[1]} in the last "
                                    f"{span(self.fold_s)}")
        if self._last_fold.get(key) != now:  # one fold per cycle: a guard's page and the
            self._folded[key] = self._folded.get(key, 0) + 1  # ladder's page are one repeat
            self._last_fold[key] = now
        n = self._folded.get(key, 0)
        repeats = f"{n} folded since; " if n else ""
        return deny(self.name, f"folded into the page for {key[0]} {key[1]} sent at "
                               f"{iso(last)} ({repeats}the next page after "
                               f"{iso(last + self.fold_s)} says so)")

    def annotate(self, proposal: Proposal) -> str:
        """The text to add to a page's message: how many pages were folded before it."""
        n = self._folded.get(self.key(proposal), 0)
        return f" ({n} similar page{'' if n == 1 else 's'} folded since the last one)" \
            if n else ""

    def sent(self, proposal: Proposal, now: float) -> None:
        key = self.key(proposal)
        self._before[key] = self._sent.get(key)
        self._sent[key] = now
        self._folded.pop(key, None)
        self._last_fold[key] = now  # a page sent in this cycle: its twin is no repeat

    def failed(self, proposal: Proposal) -> None:
        """The page did not go out (the paging command failed): nothing folds into it,
        and the next try is not a repeat."""
        key = self.key(proposal)
        before = self._before.pop(key, None)
        if before is None:
            self._sent.pop(key, None)
        else:
            self._sent[key] = before
        self._last_fold.pop(key, None)


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
