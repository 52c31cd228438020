"""Incident replays: each shipped scenario through `simulate`, with its asserted timeline.

The scenarios live in tests/scenarios/ (docs/simulate.md says what each shows). Each test
is named after its incident and asserts the key points of the timeline: which finding,
which plan, which guard said no and why, and when.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as cli_main
from agent.pipeline.api import Event
from agent.simulate.replay import simulate_file
from agent.simulate.scenario import ScenarioError, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def replay(name: str, mode: str | None = None) -> list[Event]:
    (path,) = SCENARIOS.glob(f"{name}*.jsonl")
    # an explicit configuration file: the machine's /etc is never read
    return simulate_file(path, config_file=str(SCENARIOS / "isolated.toml"), mode=mode)


def kinds(events: Sequence[Event], kind: str, **match: Any) -> list[Event]:
    return [e for e in events if e.kind == kind
            and all(e.fields.get(k) == v for k, v in match.items())]


def key_points(events: Sequence[Event]) -> list[tuple[str, str, object]]:
    """(kind, problem or action, allow) for findings, plans, outcomes and denials."""
    out: list[tuple[str, str, object]] = []
    for e in events:
        f = e.fields
        if e.kind in ("finding", "resolved"):
            out.append((e.kind, f"{f['problem']} {f['subject']}", f["trusted"]))
        elif e.kind == "plan":
            out.append(("plan", f"{f['action']} {f['subject']}", f["execute"]))
        elif e.kind == "verdict" and not f["allow"]:
            out.append(("deny", f"{f['action']} {f['subject']}", f["guard"]))
    return out


# --------------------------------------------------------------------------- incidents
def test_000_storage_kernel_bug_restarts_nfs_then_node_denied_no_coordinator_then_pages(
) -> None:
    timeline = replay("000")
    plans = kinds(timeline, "plan")
    # the fault starts at t=30 (load, D-state nfsd); the first action is within a minute
    first = plans[0]
    assert (first.fields["action"], first.fields["subject"]) == (
        "restart-service", "nfs-server.service")
    assert 30 <= first.t <= 90
    assert first.fields["steps"] == [["systemctl", "restart", "--", "nfs-server.service"]]
    assert first.fields["execute"] is False  # shipped mode: dry-run, the plan is shown
    # storage-hang (load + D state + hung-task line) climbs: node-restart needs a lease
    hang = kinds(timeline, "finding", problem="storage-hang")
    assert [e.fields["subject"] for e in hang] == ["nfsd", "nfsd"]  # two occurrences
    denied = kinds(timeline, "verdict", action="node-restart", allow=False)
    assert [e.fields["guard"] for e in denied] == ["lease", "lease"]
    assert all("no coordinator" in e.fields["reason"] for e in denied)
    assert not kinds(timeline, "plan", action="node-restart")
    # ... and at once the next rung: a page naming storage-hang
    for deny in denied:
        pages = [e for e in kinds(timeline, "plan", action="page")
                 if e.t == deny.t and e.fields["problem"] == "storage-hang"]
        assert len(pages) == 1
    # the second occurrence, 23 h later, is handled the same way from the first rung
    second = [p for p in plans if p.t >= 84120]
    assert [(p.fields["action"], p.fields["problem"]) for p in second][:2] == [
        ("restart-service", "hung-task"), ("restart-service", "storage-hang")]
    assert second[0].t - 84120 <= 60
    assert denied[1].t > 84120
    assert {e.fields["executed"] for e in kinds(timeline, "outcome")} == {False}


def test_001_auth_flood_blocks_the_flooding_addresses_not_the_user_who_mistyped() -> None:
    timeline = replay("001")
    blocks = kinds(timeline, "plan", action="block-addresses", problem="auth-flood")
    assert sorted(e.fields["subject"] for e in blocks) == [
        "192.0.2.44", "198.51.100.7", "203.0.113.5"]
    assert all(e.t <= 60 for e in blocks)  # the flood starts at t=10
    for e in blocks:
        addr = e.fields["subject"]
        assert any(addr in step for step in e.fields["steps"][1])  # nft add element ... ADDR
    assert "198.51.100.200" not in json.dumps([e.to_json() for e in timeline
                                                if e.kind == "plan"])
    # the SYN flood's kernel line names a port, not addresses: a person is paged
    assert not kinds(timeline, "verdict", action="block-addresses", problem="syn-flood")
    assert kinds(timeline, "plan", action="page", problem="syn-flood")
    # ... and its top sources (half-open connections per address, from t=60) are blocked
    # for an hour after 10 s sustained; one with 3 half-open connections is not
    syn_blocks = kinds(timeline, "plan", action="block-addresses", problem="syn-flood-source")
    assert sorted(e.fields["subject"] for e in syn_blocks) == [
        "198.51.100.99", "2001:db8::66", "203.0.113.77"]
    assert all(e.t == pytest.approx(70) for e in syn_blocks)
    for e in syn_blocks:
        add = e.fields["steps"][1]
        assert add[:6] == ["nft", "add", "element", "inet", "nodewarden",
                           "blocked6" if ":" in e.fields["subject"] else "blocked4"]
        assert add[6:10] == ["{", e.fields["subject"], "timeout", "3600s"]
    assert "192.0.2.150" not in json.dumps([e.to_json() for e in timeline])
    # the half-open connections drain at t=140: resolved, no page for the sources
    resolved = kinds(timeline, "resolved", problem="syn-flood-source")
    assert sorted(e.fields["subject"] for e in resolved) == [
        "198.51.100.99", "2001:db8::66", "203.0.113.77"]
    assert not kinds(timeline, "plan", action="page", problem="syn-flood-source")
    # webmail stops answering: restart it, failover needs a lease (none), page
    assert key_points(kinds(timeline, "plan", problem="webmail-down")) == [
        ("plan", "restart-service webmail", False),
        ("plan", "page webmail-down webmail on mx1", False)]


def test_002_rspamd_processing_loop_restarts_rspamd_then_pages() -> None:
    timeline = replay("002")
    points = [p for p in key_points(timeline) if p[0] in ("finding", "plan")]
    assert points[:3] == [
        ("finding", "spamfilter-loop rspamd", True),
        ("plan", "restart-service rspamd.service", False),
        ("plan", "page spamfilter-loop rspamd on mx2", False),
    ]
    restart = kinds(timeline, "plan", action="restart-service")[0]
    assert restart.t <= 60  # ten errors in two minutes, the first at t=10
    page = kinds(timeline, "plan", action="page", problem="spamfilter-loop")[0]
    assert page.t - restart.t == pytest.approx(300)  # the restart's verify_s
    assert kinds(timeline, "finding", problem="mailq-high")
    assert kinds(timeline, "plan", action="page", problem="mailq-high")


def test_003_provisioning_script_runaway_is_throttled_then_stopped() -> None:
    timeline = replay("003")
    plans = [(e.fields["action"], e.fields["subject"], e.t) for e in kinds(timeline, "plan")]
    assert [p[:2] for p in plans] == [
        ("throttle-unit", "provision.service"), ("stop-process", "provision.service"),
        ("page", "runaway-unit provision.service on prov1")]
    assert plans[0][2] == pytest.approx(60 + 300)  # sustained 5 min from t=60
    assert plans[1][2] - plans[0][2] == pytest.approx(300)  # throttle's verify_s
    # enforce in a replay: reported as executed and successful, nothing ran
    outcomes = kinds(timeline, "outcome")
    assert all(e.fields["executed"] and e.fields["ok"] for e in outcomes)
    assert all(e.fields["detail"].startswith("simulated (nothing ran)") for e in outcomes)
    assert kinds(timeline, "resolved", problem="runaway-unit")


def test_004_degraded_cloud_hardware_pages_through_the_configured_command() -> None:
    timeline = replay("004")
    steal = kinds(timeline, "finding", problem="cpu-steal-high")
    assert len(steal) == 1 and steal[0].t <= 120  # steal from t=30, sustained 60 s
    page = kinds(timeline, "plan", action="page", problem="cpu-steal-high")[0]
    assert page.t == steal[0].t
    assert page.fields["execute"] is True  # [guards.mode] page = "enforce"
    assert page.fields["steps"][1][:2] == ["/usr/local/bin/page-oncall", "cpu-steal-high"]
    outcome = kinds(timeline, "outcome", action="page", problem="cpu-steal-high")[0]
    assert outcome.fields["ok"] and outcome.fields["executed"]
    assert [r["argv"][0] for r in outcome.fields["results"]] == [
        "logger", "/usr/local/bin/page-oncall"]
    # the protocol probes fail too; their ladders end in pages with outcomes as well
    for problem in ("imap-down", "pop3-down", "smtp-down"):
        assert kinds(timeline, "outcome", action="page", problem=problem, ok=True)


def test_flapping_fix_that_does_not_stick_is_stopped_and_paged() -> None:
    timeline = replay("flapping")
    throttles = kinds(timeline, "plan", action="throttle-unit")
    assert len(throttles) == 3  # three "successful" fixes
    flap = kinds(timeline, "verdict", guard="flapping", allow=False)
    assert flap and flap[0].fields["action"] == "throttle-unit"
    assert "came back after 3 fixes" in flap[0].fields["reason"]
    assert flap[0].t > throttles[-1].t
    page = kinds(timeline, "plan", action="page")
    assert page and page[0].t == flap[0].t
    assert "page a person" in page[0].fields["reason"]


def test_spoofed_kernel_line_is_reported_never_acted_on() -> None:
    timeline = replay("spoofed")  # enforce mode: it would act if it trusted the line
    findings = kinds(timeline, "finding", problem="hung-task")
    assert findings and all(e.fields["trusted"] is False for e in findings)
    assert not kinds(timeline, "plan")
    assert not kinds(timeline, "outcome")
    assert not kinds(timeline, "verdict")  # untrusted evidence is never even proposed


# --------------------------------------------------------------------------- issue 7
def test_oom_kill_once_is_one_restart_verified_and_no_page() -> None:
    timeline = replay("oom_kill_once")
    assert key_points(timeline) == [
        ("finding", "oom-kill dovecot.service", True),
        ("plan", "restart-service dovecot.service", True),
        ("resolved", "oom-kill dovecot.service", True)]
    [resolved] = kinds(timeline, "resolved")
    assert resolved.t == 180  # verified 120 s after the restart: no new kill, unit active
    assert "fixed by restart-service dovecot.service" in resolved.fields["evidence"][-1]
    assert not kinds(timeline, "plan", action="page")  # no false "still firing" page


def test_oom_kill_every_15_minutes_restarts_until_flapping_then_one_page() -> None:
    timeline = replay("oom_kill_every_15")
    restarts = kinds(timeline, "plan", action="restart-service")
    assert [e.t for e in restarts] == [30, 930, 1830]  # a restart each time ...
    flap = kinds(timeline, "verdict", guard="flapping", allow=False)
    assert [e.t for e in flap] == [2730 + 900 * i for i in range(6)]  # ... until it stops
    pages = kinds(timeline, "plan", action="page")
    assert [(e.t, e.fields["problem"]) for e in pages] == [(2730, "oom-kill")]  # one page
    assert "came back after 3 fixes" in pages[0].fields["reason"]
    folded = kinds(timeline, "verdict", guard="fold", allow=False)
    assert folded and all("folded into the page" in e.fields["reason"] for e in folded)
    # every kill is an episode of its own: it fires, and it ends
    assert len(kinds(timeline, "finding", problem="oom-kill")) == 9
    assert len(kinds(timeline, "resolved", problem="oom-kill")) == 9


def test_attack_process_names_never_name_a_unit_and_junk_spends_nothing() -> None:
    timeline = replay("attack_oom")
    plans = kinds(timeline, "plan")
    # no unit named by a process, nothing restarted for the user's kills: pages only
    assert {e.fields["action"] for e in plans if e.fields["problem"].startswith("oom-kill")
            } == {"page"}
    assert not [e for e in plans if e.fields["action"] != "page"
                and e.fields["problem"] != "imap-down"]
    problems = {(e.fields["problem"], e.fields["subject"]) for e in kinds(timeline, "finding")}
    assert ("oom-kill-no-unit", "user-1000.slice") in problems
    assert ("oom-kill-no-unit", "ambiguous report") in problems  # the smuggled task_memcg
    assert not [p for p in problems if p[0] == "oom-kill"]
    # 32 junk kills fold into one page per where; the real RAID page still goes out
    junk_pages = [e for e in plans if e.fields["finding_subject"] == "user-1000.slice"]
    assert len(junk_pages) == 1
    assert kinds(timeline, "plan", action="page", problem="raid-degraded")
    # and the restart budget a real IMAP outage needs is untouched
    assert [e.fields["subject"] for e in kinds(timeline, "plan", action="restart-service")] == [
        "dovecot.service"]
    assert not kinds(timeline, "verdict", guard="budget", allow=False)


def test_attack_mail_log_injection_blocks_no_chosen_address_restarts_nothing() -> None:
    timeline = replay("attack_mail")
    blocks = kinds(timeline, "plan", action="block-addresses")
    assert [e.fields["subject"] for e in blocks] == ["203.0.113.50"]  # the real flood only
    # neither the address a HELO named nor the one a user name forged is a subject or argv
    subjects = {e.fields["subject"] for e in timeline if e.kind in ("plan", "finding")}
    assert not {"192.0.2.1", "198.51.100.250"} & subjects
    argv = [x for e in kinds(timeline, "plan") for step in e.fields["steps"] for x in step]
    assert "192.0.2.1" not in argv and "198.51.100.250" not in argv
    assert not kinds(timeline, "finding", problem="spamfilter-loop")
    assert not kinds(timeline, "plan", action="restart-service")
    # the backend failing is the server's fault: a finding of its own, a page ...
    [failing] = kinds(timeline, "finding", problem="auth-service-failing")
    assert failing.fields["subject"] == "dovecot-auth"
    assert kinds(timeline, "plan", action="page", problem="auth-service-failing")
    # ... no address is blamed for it, and the flood ladder holds meanwhile
    flood = kinds(timeline, "finding", problem="auth-flood")
    assert [e.fields["subject"] for e in flood] == ["203.0.113.50", "203.0.113.77"]
    assert not kinds(timeline, "plan", action="block-addresses", finding_subject="203.0.113.77")


def test_a_flood_that_overloads_auth_is_still_blocked_and_the_overload_pages() -> None:
    """Red-team H6: the flood's own symptoms (auth workers queued, process_limit) used to
    count as the auth service failing, which holds the flood ladder: incident 001 would
    never have been blocked."""
    timeline = replay("attack_flood_overloads")
    [overload] = kinds(timeline, "finding", problem="auth-service-overloaded")
    assert kinds(timeline, "plan", action="page", problem="auth-service-overloaded")
    blocks = kinds(timeline, "plan", action="block-addresses", problem="auth-flood")
    assert sorted(e.fields["subject"] for e in blocks) == [
        "192.0.2.44", "198.51.100.7", "203.0.113.5"]
    assert all(e.t > overload.t for e in blocks)  # blocked while the overload fires
    assert not kinds(timeline, "finding", problem="auth-service-failing")


def test_attack_forged_kernel_lines_change_no_plan() -> None:
    timeline = replay("attack_forged")
    # a file named like another signature's line, at the end of a real segfault line
    assert not kinds(timeline, "finding", problem="fs-error")
    assert not kinds(timeline, "finding", problem="raid-degraded")
    # a forged `task nfsd` beside a real hung jbd2 task: the hang is jbd2's, no nfs restart
    [hang] = kinds(timeline, "finding", problem="storage-hang")
    assert (hang.fields["subject"], hang.fields["trusted"]) == ("jbd2/dm-0-8", True)
    early = [e for e in kinds(timeline, "plan") if e.t < 900]
    assert early == []
    assert not kinds(timeline, "plan", action="node-restart")
    # a forged line first, then the real one: answered as if the forged had never been
    [restart] = kinds(timeline, "plan", action="restart-service")
    assert (restart.t, restart.fields["subject"]) == (1030, "nfs-server.service")
    assert restart.fields["reason"].startswith("rung 1 of 2")


def test_every_shipped_scenario_has_a_test() -> None:
    names = sorted(p.name.removesuffix(".jsonl") for p in SCENARIOS.glob("*.jsonl"))
    assert names == ["000_storage_kernel_hang", "001_auth_flood_dos",
                     "002_rspamd_processing_loop", "003_provisioning_script_runaway",
                     "004_degraded_cloud_hardware", "attack_flood_overloads_auth",
                     "attack_forged_kernel_lines",
                     "attack_mail_log_injection", "attack_oom_process_names",
                     "flapping_fix_does_not_stick", "oom_kill_every_15_min", "oom_kill_once",
                     "spoofed_kernel_line"]


# --------------------------------------------------------------------------- modes, CLI
def test_observe_mode_plans_nothing_and_reports_every_finding() -> None:
    timeline = replay("000", mode="observe")
    assert not kinds(timeline, "plan")
    assert kinds(timeline, "finding", problem="storage-hang")
    assert {e.fields["guard"] for e in kinds(timeline, "verdict", allow=False)} == {"mode"}


def test_simulate_json_lines_carry_t_kind_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    path = next(SCENARIOS.glob("attack_forged*.jsonl"))
    code = cli_main(["simulate", str(path), "--json", "--config", str(SCENARIOS / "isolated.toml")])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["t"] == 20 and lines[0]["kind"] == "finding"
    assert lines[0]["problem"] == "hung-task" and lines[0]["subject"] == "nfsd"
    assert lines[0]["trusted"] is False
    verdict = next(x for x in lines if x["kind"] == "verdict")
    assert {"action", "guard", "allow", "reason"} <= set(verdict)


@pytest.mark.parametrize(("text", "line", "reason"), [
    ('{"t": 0, "kmsg": "x"}\n{"t": 1, "kmsg": 5}', 2, "kmsg must be"),
    ('{"t": 0, "kmsg": "x"}\nnot json', 2, "not valid JSON"),
    ('{"t": 5, "kmsg": "x"}\n{"t": 1, "kmsg": "y"}', 2, "goes back in time"),
    ('{"t": 0, "kmsg": "x", "log": "y"}', 1, "exactly one of"),
    ('{"kmsg": "x"}', 1, 'needs "t"'),
    ('{"t": 0, "log": "x"}', 1, 'needs "source"'),
    ('{"t": 0, "probe": "imap"}', 1, '"ok"'),
    ('{"t": 0, "udev": "eject", "device": "sdb"}', 1, "add, remove or change"),
    ('{"t": 0, "metrics": {"load1": "high"}}', 1, "must be a number"),
    ('{"t": 0, "kmsg": "x", "facility": 99}', 1, "facility"),
    ('{"t": 0, "kmsg": "x"}\n{"host": {"role": "mail"}}', 2, "first line"),
    ('{"host": {"role": "filer"}}', 1, "role must be one of"),
    ('{"t": 0, "kmsg": "x", "colour": 1}', 1, "unknown key"),
    ("[1, 2]", 1, "JSON object"),
])
def test_malformed_scenario_lines_are_refused_with_their_line(
    text: str, line: int, reason: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "s.jsonl")
    assert info.value.line == line
    assert reason in info.value.reason
    assert str(info.value).startswith(f"s.jsonl:{line}: ")


def test_simulate_cli_exits_2_on_a_bad_line_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0, "metrics": {"load1_per_cpu": 1}}\n{"t": 1, "metrics": '
                   '{"load_per_cpu": 9}}\n')
    code = cli_main(["simulate", str(bad), "--config", str(SCENARIOS / "isolated.toml")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2: unknown metric 'load_per_cpu'" in err
    assert "Traceback" not in err


def test_simulate_cli_refuses_a_bad_host_config_with_key_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"host": {"config": {"guards": {"cooldown": {"default_s": "long"}}}}}\n'
                   '{"t": 0, "kmsg": "x"}\n')
    code = cli_main(["simulate", str(bad), "--config", str(SCENARIOS / "isolated.toml")])
    assert code == 2
    assert "guards.cooldown.default_s: must be a finite number" in capsys.readouterr().err
