"""The guard chain: each guard denies when it should and allows when it should; the
budget survives an agent restart (docs/architecture.md safety property 3); spoofed lines never act
(5);
no lease, no disruptive action (2)."""

from __future__ import annotations

import calendar
import os
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.guards import GuardChain, GuardSettings, Lease, build_chain
from agent.guards.windows import parse_window
from agent.model import Budget, Proposal
from agent.policy.engine import Policy
from agent.policy.ladder import Ladder, Rung
from agent.state import SafetyState
from remediations import ActionContext
from tests.unit._decide import T0, config, finding, proposal

DAY = 86400.0
SAT_3AM = float(calendar.timegm((2026, 9, 19, 3, 0, 0)))  # a Saturday, UTC


def chain(state_dir: Path, mode: str = "enforce", settings: GuardSettings | None = None,
          **kw: object) -> tuple[GuardChain, SafetyState]:
    state = SafetyState(state_dir, now=T0)
    return build_chain(settings or GuardSettings(), mode=mode, state=state, **kw), state  # type: ignore[arg-type]


def verdict(result_chain: GuardChain, p: Proposal, now: float, guard: str) -> tuple[bool, str]:
    result = result_chain.evaluate(p, now)
    v = next(v for v in result.verdicts if v.guard == guard)
    return v.allow, v.reason


class GrantingCoordinator:
    """A lease client that grants every lease (stands in for issue 5's coordinator)."""

    def __init__(self) -> None:
        self.granted: list[Lease] = []

    def describe(self) -> str:
        return "test coordinator"

    def can_grant(self) -> bool:
        return True

    def acquire(self, action: str, subject: str, ttl_s: float) -> Lease | None:
        lease = Lease(f"L{len(self.granted)}", action, subject, T0 + ttl_s)
        self.granted.append(lease)
        return lease

    def release(self, lease: Lease) -> None:
        self.granted.remove(lease)


RESTART = proposal("node-restart", "nas1", disruptive=True, needs_lease=True)


def test_budget_survives_agent_restart_and_denies_the_third_node_restart(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    for _ in range(2):  # two agents' lifetimes, each restarting the node once
        c, state = chain(tmp_path, lease_client=GrantingCoordinator())
        result = c.evaluate(RESTART, clock.now())
        assert result.allowed and result.execute and result.lease is not None
        state.record_execution("node-restart", "nas1", clock.now())
        clock.advance(3 * 3600)
    c, _ = chain(tmp_path, lease_client=GrantingCoordinator())  # third agent after reboot
    result = c.evaluate(RESTART, clock.now())
    assert not result.allowed and "budget" in result.denied_by
    [reason] = [v.reason for v in result.verdicts if v.guard == "budget"]
    assert reason.startswith("budget: 2 of 2 node-restart on this host in the last 24h "
                             "(next allowed at ")
    assert result.lease is None  # no lease taken for a denied action
    clock.advance(DAY - 6 * 3600)  # the first restart leaves the window
    c, _ = chain(tmp_path, lease_client=GrantingCoordinator())
    assert c.evaluate(RESTART, clock.now()).allowed


def test_lease_default_denies_with_no_coordinator(tmp_path: Path) -> None:
    c, _ = chain(tmp_path)
    allow, reason = verdict(c, RESTART, T0, "lease")
    assert not allow and "no coordinator" in reason
    allow, reason = verdict(c, proposal("restart-service"), T0, "lease")
    assert allow and reason == "lease: not needed"
    dry, _ = chain(tmp_path / "dry", mode="dry-run")
    allow, reason = verdict(dry, RESTART, T0, "lease")
    assert not allow and "no coordinator" in reason  # dry-run says what enforce would


def test_spoofed_kernel_line_never_yields_an_allowed_proposal(tmp_path: Path) -> None:
    ladder = Ladder("storage-hang", (Rung("restart-service", "nfs-server.service"),
                                     Rung("page", "{subject}")))
    policy = Policy([ladder], hostname="nas1")
    for mode in ("enforce", "dry-run"):
        c, _ = chain(tmp_path / mode, mode=mode)
        spoof = finding("storage-hang", "nfsd", trusted=False)
        for t in range(0, 7200, 60):
            for p in policy.step([spoof], T0 + t):
                result = c.evaluate(p, T0 + t)
                assert not result.allowed and not result.execute
                assert ("trust: kernel line written from userspace: reported, never acted on"
                        in [v.reason for v in result.verdicts])
                policy.record(p, T0 + t, "denied", denied_by=result.denied_by)


@pytest.mark.parametrize(("mode", "per_action", "origin", "allowed", "execute"), [
    ("observe", {}, "policy", False, False),
    ("dry-run", {}, "policy", True, False),
    ("enforce", {}, "policy", True, True),
    ("dry-run", {"restart-service": "enforce"}, "policy", True, True),
    ("enforce", {"restart-service": "observe"}, "policy", False, False),
    ("observe", {}, "operator", True, True),
])
def test_mode(tmp_path: Path, mode: str, per_action: dict[str, str], origin: str,
              allowed: bool, execute: bool) -> None:
    c, _ = chain(tmp_path, mode=mode, settings=GuardSettings(action_modes=per_action))
    result = c.evaluate(proposal(origin=origin), T0)
    assert (result.allowed, result.execute) == (allowed, execute)
    mode_verdict = result.verdicts[0]
    assert mode_verdict.guard == "mode" and mode_verdict.allow is allowed


def test_cooldown_per_action_and_subject(tmp_path: Path) -> None:
    c, state = chain(tmp_path, settings=GuardSettings(cooldown_s=600))
    state.record_execution("restart-service", "nfs-server.service", T0)
    allow, reason = verdict(c, proposal(), T0 + 240, "cooldown")
    assert not allow and "ran 4m ago" in reason and "cooldown 10m" in reason
    assert verdict(c, proposal(subject="dovecot.service"), T0 + 240, "cooldown")[0]
    assert verdict(c, proposal(), T0 + 600, "cooldown")[0]


def test_flapping_denies_after_k_fixes_and_asks_for_a_page(tmp_path: Path) -> None:
    settings = GuardSettings(flapping_max_fixes=3, flapping_window_s=6 * 3600)
    c, state = chain(tmp_path, settings=settings)
    for i in range(2):
        state.record_fix("storage-hang", "nfsd", T0 + i * 600)
    assert verdict(c, proposal(), T0 + 1800, "flapping")[0]
    state.record_fix("storage-hang", "nfsd", T0 + 1200)
    result = c.evaluate(proposal(), T0 + 1800)
    assert not result.allowed and result.page is not None
    assert "came back after 3 fixes in the last 6h (limit 3)" in result.page
    assert verdict(c, proposal("page", "storage-hang nfsd"), T0 + 1800, "flapping")[0]
    assert verdict(c, proposal(), T0 + 6 * 3600 + 1, "flapping")[0]  # window passed


def test_maintenance_flag_and_disruptive_windows(tmp_path: Path) -> None:
    sat_3am = SAT_3AM
    settings = GuardSettings(disruptive_windows=(parse_window("Sat 02:00-05:00"),))
    c, state = chain(tmp_path, settings=settings)
    assert verdict(c, RESTART, sat_3am, "maintenance")[0]
    allow, reason = verdict(c, RESTART, sat_3am + 3 * 3600, "maintenance")
    assert not allow and "allowed only in Sat 02:00-05:00 (UTC)" in reason
    assert verdict(c, proposal(), sat_3am + 3 * 3600, "maintenance")[0]  # not disruptive
    state.set_maintenance(sat_3am, 7200, "switch firmware", by="alice")
    allow, reason = verdict(c, proposal(), sat_3am + 60, "maintenance")
    assert not allow and "switch firmware" in reason and "alice" in reason
    assert verdict(c, proposal("page", "x"), sat_3am + 60, "maintenance")[0]
    assert verdict(c, proposal(origin="operator"), sat_3am + 60, "maintenance")[0]
    assert verdict(c, proposal(), sat_3am + 7200, "maintenance")[0]  # expired


def test_approval_is_needed_then_consumed_on_execution(tmp_path: Path) -> None:
    c, state = chain(tmp_path)
    p = proposal(needs_approval=True)
    allow, reason = verdict(c, p, T0, "approval")
    assert not allow
    assert "nodewarden approve restart-service --subject nfs-server.service" in reason
    state.approve("restart-service", "nfs-server.service", T0, 3600, by="bob")
    assert verdict(c, p, T0 + 10, "approval")[0]
    assert not verdict(c, p, T0 + 3600, "approval")[0]  # expired
    state.approve("restart-service", "nfs-server.service", T0 + 3600, 3600)
    state.record_execution("restart-service", "nfs-server.service", T0 + 3700)
    assert not verdict(c, p, T0 + 3800, "approval")[0]  # used up
    assert verdict(c, proposal(), T0, "approval")[0]  # rung without needs_approval


def test_every_verdict_is_reported_not_just_the_first_deny(tmp_path: Path) -> None:
    c, state = chain(tmp_path, mode="observe")
    state.set_maintenance(T0, 3600, "work")
    result = c.evaluate(proposal("node-restart", "nas1", disruptive=True, trusted=False), T0)
    assert {"mode", "trust", "maintenance"} <= set(result.denied_by)
    assert [v.guard for v in result.verdicts] == [
        "mode", "trust", "maintenance", "cooldown", "budget", "flapping", "fold", "approval"]
    assert result.summary().startswith("denied node-restart nas1: mode: observe")


def test_preconditions_ask_the_remediation(tmp_path: Path) -> None:
    ctx = ActionContext(hostname="nas1", state_dir=tmp_path, agent_pid=os.getpid(),
                        clock=FakeClock(T0))
    c, _ = chain(tmp_path, ctx=ctx)
    allow, reason = verdict(c, proposal("restart-service", "bad unit;rm"), T0, "preconditions")
    assert not allow and reason.startswith("preconditions: ")
    allow, reason = verdict(c, proposal("no-such-action", "x"), T0, "preconditions")
    assert not allow and "no remediation module provides 'no-such-action'" in reason


def test_guard_config_errors_carry_file_key_reason() -> None:
    f = "/etc/nodewarden/agent.toml"
    _, errors = config({"guards": {
        "mode": {"reboot": "enforce", "page": "loud"},
        "maintenance": {"disruptive_windows": ["Caturday 02:00-05:00", "Sat 05:00-05:00"]},
        "budget": {"node-restart": {"window_s": 3600}},
        "flapping": {"max_fixes": 0},
    }}, f)
    keys = {(e.file, e.key) for e in errors}
    assert {(f, "guards.mode.reboot"), (f, "guards.mode.page"),
            (f, "guards.maintenance.disruptive_windows[0]"),
            (f, "guards.maintenance.disruptive_windows[1]"),
            (f, "guards.budget.node-restart.max"), (f, "guards.flapping.max_fixes")} <= keys


def test_guard_config_is_applied() -> None:
    cfg, errors = config({"guards": {
        "budget": {"node-restart": {"max": 1, "window_s": 3600},
                   "restart-service": {"max": 3, "per": "host"}},
        "cooldown": {"default_s": 30, "exec": 5}, "page": {"fold_s": 600}}})
    assert errors == []
    assert cfg.guards.budgets["node-restart"] == Budget(1, 3600.0, "host")
    assert cfg.guards.budgets["restart-service"] == Budget(3, 3600.0, "host")
    assert cfg.guards.budgets["block-addresses"].per == "problem"
    assert (cfg.guards.cooldown_s, cfg.guards.cooldowns["exec"]) == (30.0, 5.0)
    assert cfg.guards.page_fold_s == 600.0


@pytest.mark.parametrize(("table", "reason"), [
    ({"budget": {"page": {"max": 5}}}, "never budgeted"),
    ({"cooldown": {"page": 60}}, "folded"),
    ({"budget": {"exec": {"max": 1, "per": "planet"}}}, "must be one of problem, host"),
])
def test_pages_cannot_be_budgeted_or_cooled_down(table: dict[str, object], reason: str) -> None:
    _, errors = config({"guards": table})
    assert len(errors) == 1 and reason in errors[0].reason


# --------------------------------------------------------------------------- pages go out
def test_a_page_is_never_denied_by_a_budget_and_junk_cannot_spend_another_problem(
        tmp_path: Path) -> None:
    """25 junk OOM kills of distinct names used to spend the page budget (20/h) and then
    a real raid-degraded page was denied; and the restart budget an IMAP outage needs."""
    c, state = chain(tmp_path)
    for i in range(25):
        p = proposal("page", f"oom-kill-no-unit junk{i} on mx1", problem="oom-kill-no-unit",
                     finding_subject=f"junk{i}")
        assert c.evaluate(p, T0 + i).allowed
        state.record_execution("page", p.subject, T0 + i, problem=p.problem,
                               finding_subject=p.finding_subject)
        c.fold.sent(p, T0 + i)  # type: ignore[union-attr]
    raid = proposal("page", "raid-degraded md0 on nas1", problem="raid-degraded",
                    finding_subject="md0")
    assert c.evaluate(raid, T0 + 30).allowed
    for i in range(6):  # junk restarts spend oom-kill's restart budget only
        state.record_execution("restart-service", f"junk{i}.service", T0 + i,
                               problem="oom-kill", target=f"junk{i}.service")
    junk = proposal("restart-service", "junk7.service", problem="oom-kill",
                    target="junk7.service")
    assert not c.evaluate(junk, T0 + 40).allowed
    imap = proposal("restart-service", "dovecot.service", problem="imap-down",
                    finding_subject="imap", target="dovecot.service")
    allow, reason = verdict(c, imap, T0 + 40, "budget")
    assert allow and reason == "budget: 0 of 6 restart-service for imap-down in the last 1h"


def test_repeated_pages_fold_into_one_per_problem_and_subject_with_a_count(
        tmp_path: Path) -> None:
    c, _ = chain(tmp_path, settings=GuardSettings(page_fold_s=3600))
    fold = c.fold
    assert fold is not None
    page = proposal("page", "oom-kill dovecot.service on mx1", problem="oom-kill",
                    finding_subject="dovecot.service")
    assert c.evaluate(page, T0).allowed
    fold.sent(page, T0)
    for i in (1, 2, 3):
        allow, reason = verdict(c, page, T0 + 600 * i, "fold")
        assert not allow and f"({i} folded since;" in reason
    other = proposal("page", "oom-kill rspamd.service on mx1", problem="oom-kill",
                     finding_subject="rspamd.service")
    assert c.evaluate(other, T0 + 60).allowed  # another subject is another page
    assert c.evaluate(page, T0 + 3600).allowed  # the window is over
    assert fold.annotate(page) == " (3 similar pages folded since the last one)"
    fold.sent(page, T0 + 3600)
    assert fold.annotate(page) == ""
    operator = proposal("page", page.subject, problem="oom-kill", origin="operator")
    assert c.evaluate(operator, T0 + 3601).allowed  # an operator's page is theirs


def test_fold_remembers_pages_that_went_out_before_a_restart(tmp_path: Path) -> None:
    _, state = chain(tmp_path, settings=GuardSettings(page_fold_s=3600))
    state.record_execution("page", "raid-degraded md0 on nas1", T0, problem="raid-degraded",
                           finding_subject="md0")
    c2, _ = chain(tmp_path, settings=GuardSettings(page_fold_s=3600))  # a new agent
    page = proposal("page", "raid-degraded md0 on nas1", problem="raid-degraded",
                    finding_subject="md0")
    allow, _ = verdict(c2, page, T0 + 60, "fold")
    assert not allow


def test_cooldown_and_flapping_are_keyed_on_the_target_not_its_spelling(
        tmp_path: Path) -> None:
    c, state = chain(tmp_path)
    state.record_execution("restart-service", "dovecot", T0, problem="oom-kill",
                           target="dovecot.service")
    again = proposal("restart-service", "dovecot.service", problem="oom-kill",
                     finding_subject="dovecot.service", target="dovecot.service")
    allow, reason = verdict(c, again, T0 + 10, "cooldown")
    assert not allow and "dovecot.service ran 10s ago" in reason
    for i in range(3):
        state.record_fix("oom-kill", "dovecot", T0 + i, "restart-service",
                         target="dovecot.service")
    allow, reason = verdict(c, again, T0 + 700, "flapping")
    assert not allow and "page a person" in reason


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("Sat 02:00-05:00", [SAT_3AM], [SAT_3AM + 3 * 3600, SAT_3AM + 86400]),
    ("daily 23:00-01:00", [SAT_3AM - 4 * 3600 + 1800, SAT_3AM - 3 * 3600 + 1800], [SAT_3AM]),
    ("Sun 23:00-01:00", [SAT_3AM + 2 * 86400 - 3 * 3600 + 1800],  # Mon 00:30
     [SAT_3AM + 86400 - 3 * 3600 + 1800]),  # Sun 00:30
    ("Mon-Fri 09:00-17:00", [SAT_3AM - 86400 + 6 * 3600], [SAT_3AM + 6 * 3600]),
])
def test_windows(text: str, inside: list[float], outside: list[float]) -> None:
    w = parse_window(text)
    assert all(w.contains(t) for t in inside)
    assert not any(w.contains(t) for t in outside)


def test_the_budget_and_cooldown_guards_say_how_much_is_left(tmp_path: Path) -> None:
    """What `nodewarden status` shows comes from the guards themselves: the same
    arithmetic that allows or denies."""
    from agent.guards.stateful import BudgetGuard, CooldownGuard

    state = SafetyState(tmp_path, now=T0)
    for t, problem in ((T0 - 100, "imap-down"), (T0 - 50, "imap-down"), (T0 - 10, "oom")):
        state.record_execution("restart-service", "dovecot.service", t, problem=problem)
    state.record_execution("node-restart", "h1", T0 - 200, problem="storage-hang")
    budgets = {"restart-service": Budget(2, 3600.0), "node-restart": Budget(2, 86400.0, "host"),
               "exec": Budget(1, 60.0)}
    left = {(b.action, b.problem): b for b in BudgetGuard(state, budgets).left(T0)}
    assert set(left) == {("exec", None), ("node-restart", None),
                         ("restart-service", "imap-down"), ("restart-service", "oom")}
    imap = left[("restart-service", "imap-down")]
    assert (imap.used, imap.exhausted, imap.next_allowed) == (2, True, T0 - 100 + 3600)
    assert (left[("restart-service", "oom")].used, left[("exec", None)].used) == (1, 0)
    assert not left[("node-restart", None)].exhausted
    cooling = CooldownGuard(state, 600.0, {"node-restart": 3600.0}).left(T0)
    assert sorted((c.action, c.until) for c in cooling) == [
        ("node-restart", T0 - 200 + 3600), ("restart-service", T0 - 100 + 600),
        ("restart-service", T0 - 50 + 600), ("restart-service", T0 - 10 + 600)]
