"""`[guards.*]` configuration (documented key by key in docs/guards.md).

    [guards.mode]           ACTION = "observe" | "dry-run" | "enforce"   (overrides agent.mode)
    [guards.maintenance]    disruptive_windows = ["Sat 02:00-05:00"]     (UTC; empty = any time)
    [guards.cooldown]       default_s = 600, ACTION = SECONDS             (not pages)
    [guards.budget]         ACTION = { max = N, window_s = SECONDS, per = "problem"|"host" }
                            (max = 0: never; never a page)
    [guards.page]           fold_s = 14400   (one page per problem and subject per window)
    [guards.flapping]       max_fixes = 3, window_s = 21600
    [guards.lease]          ttl_s = 900
    [guards.approval]       ttl_s = 3600   (default lifetime of `nodewarden approve`)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agent.guards.windows import Window, parse_window
from agent.model import Budget
from agent.schema import MODES, Section
from remediations import UnknownAction, load, names


def default_budgets() -> Mapping[str, Budget]:
    """Each action's own budget (remediations: node restarts and failovers per host, DESIGN
    safety property 3; the rest per action and problem); a page has none."""
    return MappingProxyType({a: b for a in names() if (b := load(a).BUDGET) is not None})


def default_cooldowns() -> Mapping[str, float]:
    """The actions that declare a cooldown of their own (the rest: `default_s`)."""
    return MappingProxyType({a: c for a in names() if (c := load(a).COOLDOWN_S) is not None})


#: one page per problem and subject per this long (Alertmanager's repeat_interval)
DEFAULT_FOLD_S = 14400.0
BUDGET_PER = ("problem", "host")
#: no guard window is longer than a year (a typo such as 1e20 is refused, not lived with)
YEAR_S = 366 * 86400.0


@dataclass(frozen=True)
class GuardSettings:
    action_modes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    disruptive_windows: tuple[Window, ...] = ()
    cooldown_s: float = 600.0
    cooldowns: Mapping[str, float] = field(default_factory=default_cooldowns)
    budgets: Mapping[str, Budget] = field(default_factory=default_budgets)
    page_fold_s: float = DEFAULT_FOLD_S
    flapping_max_fixes: int = 3
    flapping_window_s: float = 21600.0
    lease_ttl_s: float = 900.0
    approval_ttl_s: float = 3600.0


def _action_key(s: Section, action: str) -> bool:
    try:
        load(action)
    except UnknownAction as exc:
        s.error(action, str(exc))
        return False
    except ImportError as exc:
        s.error(action, f"the remediation module is broken: {exc}")
        return False
    return True


def parse_guards(top: Section) -> GuardSettings:
    d = GuardSettings()
    g = top.table("guards")

    mode_s = g.table("mode")
    modes = {a: mode_s.choice(a, MODES, "dry-run") for a in mode_s.raw if _action_key(mode_s, a)}
    mode_s.finish()

    maint = g.table("maintenance")
    windows = []
    for i, text in enumerate(maint.str_list("disruptive_windows", ())):
        try:
            windows.append(parse_window(text))
        except ValueError as exc:
            maint.error(f"disruptive_windows[{i}]", str(exc))
    maint.finish()

    cool = g.table("cooldown")
    default_s = cool.number("default_s", d.cooldown_s, minimum=0.0, maximum=YEAR_S)
    cooldowns = dict(d.cooldowns)
    for a in [k for k in cool.raw if k != "default_s"]:
        if a == "page":
            cool.refuse(a, "pages are not cooled down: they are folded ([guards.page] fold_s)")
        elif _action_key(cool, a):
            cooldowns[a] = cool.number(a, cooldowns.get(a, default_s), minimum=0.0,
                                       maximum=YEAR_S)
    cool.finish()

    bud = g.table("budget")
    budgets = dict(d.budgets)
    for a in list(bud.raw):
        if a == "page":
            bud.refuse(a, "a page always goes out: pages are never budgeted (repeats are "
                          "folded: [guards.page] fold_s)")
            continue
        sub = bud.table(a)
        if _action_key(bud, a):
            old = budgets.get(a, Budget(0, 3600.0))
            budgets[a] = Budget(sub.integer("max", old.max, minimum=0),
                                sub.number("window_s", old.window_s, minimum=1.0,
                                           maximum=YEAR_S),
                                sub.choice("per", BUDGET_PER, old.per))
            if not sub.has("max"):
                sub.error("max", "is required")
        sub.finish()
    bud.finish()

    page = g.table("page")
    fold_s = page.number("fold_s", d.page_fold_s, minimum=0.0, maximum=7 * 86400.0)
    page.finish()

    flap = g.table("flapping")
    max_fixes = flap.integer("max_fixes", d.flapping_max_fixes, minimum=1)
    flap_window = flap.number("window_s", d.flapping_window_s, minimum=1.0, maximum=YEAR_S)
    flap.finish()

    lease = g.table("lease")
    ttl = lease.number("ttl_s", d.lease_ttl_s, minimum=10.0, maximum=YEAR_S)
    lease.finish()

    appr = g.table("approval")
    appr_ttl = appr.number("ttl_s", d.approval_ttl_s, minimum=1.0, maximum=YEAR_S)
    appr.finish()
    g.finish()
    return GuardSettings(
        action_modes=MappingProxyType(modes),
        disruptive_windows=tuple(windows),
        cooldown_s=default_s,
        cooldowns=MappingProxyType(cooldowns),
        budgets=MappingProxyType(budgets),
        page_fold_s=fold_s,
        flapping_max_fixes=max_fixes,
        flapping_window_s=flap_window,
        lease_ttl_s=ttl,
        approval_ttl_s=appr_ttl,
    )
