"""Policy ladders: climbing, resetting, holding, persistence; ladder config errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.model import Finding
from agent.policy.engine import Policy
from agent.policy.ladder import Ladder, Rung
from agent.state import SafetyState
from tests.unit._decide import T0, config, finding

FILE = "/etc/nodewarden/agent.toml"
HANG = Ladder("storage-hang", (
    Rung("restart-service", "nfs-server.service", verify_s=300),
    Rung("node-restart", "{host}", verify_s=900),
    Rung("page", "{problem} {subject} on {host}", verify_s=0),
), quiet_s=3600, retry_s=120)


def drive(policy: Policy, clock: FakeClock, timeline: list[tuple[float, list[Finding]]],
          ) -> list[tuple[float, str, str]]:
    """Step the policy at each (time offset, findings); (offset, action, subject) proposed."""
    out = []
    for dt, findings in timeline:
        clock.advance(T0 + dt - clock.now())
        for p in policy.step(findings, clock.now()):
            out.append((dt, p.action, p.subject))
    return out


def fire(dt: float) -> list[Finding]:
    return [finding("storage-hang", "nfsd", T0 + dt)]


def test_ladder_climbs_after_verify_s_and_stops_at_the_top() -> None:
    clock = FakeClock(T0)
    policy = Policy([HANG], hostname="nas1")
    got = drive(policy, clock, [(0, fire(0)), (60, fire(60)), (299, fire(299)),
                                (300, fire(300)), (1199, fire(1199)), (1200, fire(1200)),
                                (5000, fire(5000))])
    assert got == [(0, "restart-service", "nfs-server.service"), (300, "node-restart", "nas1"),
                   (1200, "page", "storage-hang nfsd on nas1")]
    assert policy.positions()[0].summary.startswith("exhausted")


def test_cleared_finding_resets_after_quiet_but_a_quick_return_climbs() -> None:
    clock = FakeClock(T0)
    policy = Policy([HANG], hostname="nas1")
    got = drive(policy, clock, [(0, fire(0)), (100, []), (1000, fire(1000))])
    # back within quiet_s (the same night, incident 000): next rung at once
    assert got == [(0, "restart-service", "nfs-server.service"), (1000, "node-restart", "nas1")]
    got = drive(policy, clock, [(2000, []), (5601, []), (5700, fire(5700))])
    assert got == [(5700, "restart-service", "nfs-server.service")]  # quiet for 1 h: reset


def test_denied_rung_climbs_but_maintenance_holds_it() -> None:
    policy = Policy([HANG], hostname="nas1")
    [p] = policy.step(fire(0), T0)
    policy.record(p, T0, "denied", denied_by=("maintenance",))
    assert policy.step(fire(60), T0 + 60) == []
    [again] = policy.step(fire(120), T0 + 120)
    assert again.action == "restart-service"  # retried after retry_s
    policy.record(again, T0 + 120, "denied", denied_by=("budget", "lease"))
    [nxt] = policy.step(fire(121), T0 + 121)
    assert nxt.action == "node-restart"  # a hard deny climbs towards page at once


def test_an_untrusted_finding_gets_no_proposal_and_holds_nothing() -> None:
    policy = Policy([HANG], hostname="nas1")
    spoof = finding("storage-hang", "nfsd", trusted=False)
    assert policy.step([spoof], T0) == []
    assert policy.notes == ["storage-hang nfsd: untrusted (written from userspace): "
                            "reported, never acted on"]
    assert policy.positions() == []
    # the real one next is answered at once, from the first rung
    [p] = policy.step([spoof, finding("storage-hang", "nfsd")], T0 + 5)
    assert (p.rung, p.trusted) == (0, True)


def test_subjects_and_suppressed_by_filter_ladders() -> None:
    imap = Ladder("imap-down", (Rung("restart-service", "dovecot.service"),),
                  suppressed_by=("nfs-not-responding",))
    hang = Ladder("hung-task", (Rung("page"),), subjects=("nfsd*",))
    policy = Policy([imap, hang], hostname="mx1")
    assert policy.step([finding("hung-task", "kworker/1:2")], T0) == []
    assert policy.step([finding("imap-down", "imap"), finding("nfs-not-responding", "nas-a1")],
                       T0) == []
    assert any("nfs-not-responding" in n for n in policy.notes)
    [p] = policy.step([finding("imap-down", "imap")], T0 + 1)
    assert (p.action, p.subject, p.finding_subject) == ("restart-service", "dovecot.service",
                                                         "imap")


def test_proposal_carries_traits_params_and_reason() -> None:
    ladder = Ladder("oom-kill", (Rung("restart-service", "{subject}",
                                      params={"timeout": "30s"}, needs_approval=True),
                                 Rung("node-restart", "{host}", lease=False)))
    policy = Policy([ladder], hostname="mx1")
    [p] = policy.step([finding("oom-kill", "dovecot")], T0)
    assert (p.subject, dict(p.params), p.needs_approval, p.rung) == (
        "dovecot", {"timeout": "30s"}, True, 0)
    assert "rung 1 of 2" in p.reason
    policy.record(p, T0, "failed")
    [q] = policy.step([finding("oom-kill", "dovecot")], T0 + 1)
    assert (q.action, q.disruptive, q.needs_lease) == ("node-restart", True, False)


def test_positions_survive_a_restart_and_fixes_are_recorded(tmp_path: Path) -> None:
    state = SafetyState(tmp_path, now=T0)
    policy = Policy([HANG], hostname="nas1", state=state)
    [p] = policy.step(fire(0), T0)
    policy.record(p, T0, "executed")
    policy.step([], T0 + 100)  # it cleared: a fix
    assert [f.problem for f in state.fixes("storage-hang", "nfsd")] == ["storage-hang"]
    reborn = Policy([HANG], hostname="nas1", state=SafetyState(tmp_path, now=T0 + 200))
    [q] = reborn.step(fire(300), T0 + 300)
    assert q.action == "node-restart"


def test_a_restart_does_not_count_a_fix_it_did_not_see(tmp_path: Path) -> None:
    """The agent restarted while storage-hang fired after a rung ran: the new process has
    not seen the finding (its kernel lines are not read again), so the finding's absence
    is not a "successful fix" for the flapping guard; if it fires again within quiet_s,
    the ladder continues at its next rung."""
    state = SafetyState(tmp_path, now=T0)
    policy = Policy([HANG], hostname="nas1", state=state)
    [p] = policy.step(fire(0), T0)
    policy.record(p, T0, "executed")
    reborn_state = SafetyState(tmp_path, now=T0 + 10)
    reborn = Policy([HANG], hostname="nas1", state=reborn_state)
    assert reborn.step([], T0 + 10) == []
    assert reborn_state.fixes("storage-hang", "nfsd") == []
    [q] = reborn.step(fire(400), T0 + 400)
    assert q.action == "node-restart"


@pytest.mark.parametrize(("policy", "key", "reason"), [
    ({"storage-hang": {"rungs": [{"action": "reboot-now"}]}},
     "policy.storage-hang.rungs[0].action", "unknown action 'reboot-now'"),
    ({"storage-hang": {"rungs": [{"subject": "x"}]}},
     "policy.storage-hang.rungs[0].action", "is required"),
    ({"storage-hang": {"rungs": [{"action": "restart-service", "params": {"colour": "red"}}]}},
     "policy.storage-hang.rungs[0].params", "unknown parameter 'colour'"),
    ({"storage-hang": {"rungs": [{"action": "page", "subject": "{user}"}]}},
     "policy.storage-hang.rungs[0].subject", "unknown placeholder {user}"),
    ({"storage-hang": {"rungs": [{"action": "page", "verify_s": -1}]}},
     "policy.storage-hang.rungs[0].verify_s", "must be at least 0"),
    ({"storage-hang": {"rungs": "page"}}, "policy.storage-hang.rungs", "a list of tables"),
    ({"storage-hang": {}}, "policy.storage-hang.rungs", "is required"),
])
def test_bad_ladder_is_refused_with_file_key_reason(
    policy: dict[str, object], key: str, reason: str
) -> None:
    _, errors = config({"policy": policy}, FILE)
    assert any(e.file == FILE and e.key == key and reason in e.reason for e in errors), errors


def test_user_ladder_replaces_default_and_empty_rungs_remove_it() -> None:
    cfg, errors = config({"agent": {"role": "storage"}, "policy": {
        "storage-hang": {"rungs": [{"action": "page"}]},
        "hung-task": {"rungs": []},
    }})
    assert errors == []
    ladders = {ladder.problem: ladder for ladder in cfg.ladders}
    assert [r.action for r in ladders["storage-hang"].rungs] == ["page"]
    assert "hung-task" not in ladders


@pytest.mark.parametrize(("role", "problem", "actions"), [
    ("storage", "storage-hang", ["restart-service", "node-restart", "page"]),
    ("mail", "nfs-not-responding", ["page"]),
    ("mail", "auth-flood", ["block-addresses", "page"]),
    ("mail", "syn-flood", ["page"]),
    ("mail", "syn-flood-source", ["block-addresses", "page"]),
    ("mail", "syn-flood-source", ["block-addresses", "page"]),
    ("mail", "imap-down", ["restart-service", "failover-service", "page"]),
    ("generic", "oom-kill", ["restart-service", "page"]),
    ("generic", "runaway-unit", ["throttle-unit", "stop-process", "page"]),
    ("generic", "fs-shutdown", ["failover-service", "page"]),
    ("generic", "raid-degraded", ["page"]),
    ("generic", "mce", ["page"]),
    ("generic", "memory-ecc", ["page"]),
])
def test_shipped_ladders_answer_the_incidents(role: str, problem: str,
                                              actions: list[str]) -> None:
    cfg, errors = config({"agent": {"role": role}})
    assert errors == []
    ladders = {ladder.problem: ladder for ladder in cfg.ladders}
    assert [r.action for r in ladders[problem].rungs] == actions


def test_mail_syn_flood_source_blocks_the_address_for_an_hour_then_pages() -> None:
    cfg, _ = config({"agent": {"role": "mail", "hostname": "mx1"}})
    policy = Policy(cfg.ladders, hostname="mx1")
    [p] = policy.step([finding("syn-flood-source", "203.0.113.5")], T0)
    assert (p.action, p.subject, dict(p.params)) == (
        "block-addresses", "203.0.113.5", {"timeout": "1h"})
    policy.record(p, T0, "executed")
    [q] = policy.step([finding("syn-flood-source", "203.0.113.5")], T0 + 300)
    assert (q.action, q.subject) == ("page", "syn-flood-source 203.0.113.5 on mx1")


def test_storage_node_restart_rung_needs_a_lease() -> None:
    cfg, _ = config({"agent": {"role": "storage", "hostname": "nas1"}})
    policy = Policy(cfg.ladders, hostname="nas1")
    [p] = policy.step([finding("storage-hang", "nfsd")], T0)
    policy.record(p, T0, "executed")
    [q] = policy.step([finding("storage-hang", "nfsd")], T0 + 300)
    assert (q.action, q.subject, q.needs_lease) == ("node-restart", "nas1", True)
