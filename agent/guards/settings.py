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
    """Each action's own budget (remediations: node restarts and failovers per host,
    docs/architecture.md safety property 3; the rest per action and problem); a page has none."""
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


def _modes(s: Section) -> Mapping[str, str]:
    modes = {a: s.choice(a, MODES, "dry-run") for a in s.raw if _action_key(s, a)}
    s.finish()
    return MappingProxyType(modes)


def _windows(s: Section) -> tuple[Window, ...]:
    windows = []
    for i, text in enumerate(s.str_list("disruptive_windows", ())):
        try:
            windows.append(parse_window(text))
        except ValueError as exc:
            s.error(f"disruptive_windows[{i}]", str(exc))
    s.finish()
    return tuple(windows)


def _cooldowns(s: Section, d: GuardSettings) -> tuple[float, Mapping[str, float]]:
    default_s = s.number("default_s", d.cooldown_s, minimum=0.0, maximum=YEAR_S)
    cooldowns = dict(d.cooldowns)
    for a in [k for k in s.raw if k != "default_s"]:
        if a == "page":
            s.refuse(a, "pages are not cooled down: they are folded ([guards.page] fold_s)")
        elif _action_key(s, a):
            cooldowns[a] = s.number(a, cooldowns.get(a, default_s), minimum=0.0,
                                    maximum=YEAR_S)
    s.finish()
    return default_s, MappingProxyType(cooldowns)


def _budgets(s: Section, d: GuardSettings) -> Mapping[str, Budget]:
    budgets = dict(d.budgets)
    for a in list(s.raw):
        if a == "page":
            s.refuse(a, "a page always goes out: pages are never budgeted (repeats are "
                        "folded: [guards.page] fold_s)")
            continue
        sub = s.table(a)
        if _action_key(s, a):
            old = budgets.get(a, Budget(0, 3600.0))
            budgets[a] = Budget(sub.integer("max", old.max, minimum=0),
                                sub.number("window_s", old.window_s, minimum=1.0,
                                           maximum=YEAR_S),
                                sub.choice("per", BUDGET_PER, old.per))
            if not sub.has("max"):
                sub.error("max", "is required")
        sub.finish()
    s.finish()
    return MappingProxyType(budgets)


def _one(s: Section, key: str, default: float, lo: float, hi: float = YEAR_S) -> float:
    """A table of one number (`[guards.lease] ttl_s`)."""
    value = s.number(key, default, minimum=lo, maximum=hi)
    s.finish()
    return value


def parse_guards(top: Section) -> GuardSettings:
    """`[guards.*]` (module docstring); errors to `top.errors` with file, key and reason."""
    d = GuardSettings()
    g = top.table("guards")
    cooldown_s, cooldowns = _cooldowns(g.table("cooldown"), d)
    flap = g.table("flapping")
    max_fixes = flap.integer("max_fixes", d.flapping_max_fixes, minimum=1)
    flap_window = _one(flap, "window_s", d.flapping_window_s, 1.0)
    settings = GuardSettings(
        action_modes=_modes(g.table("mode")),
        disruptive_windows=_windows(g.table("maintenance")),
        cooldown_s=cooldown_s,
        cooldowns=cooldowns,
        budgets=_budgets(g.table("budget"), d),
        page_fold_s=_one(g.table("page"), "fold_s", d.page_fold_s, 0.0, 7 * 86400.0),
        flapping_max_fixes=max_fixes,
        flapping_window_s=flap_window,
        lease_ttl_s=_one(g.table("lease"), "ttl_s", d.lease_ttl_s, 10.0),
        approval_ttl_s=_one(g.table("approval"), "ttl_s", d.approval_ttl_s, 1.0),
    )
    g.finish()
    return settings
