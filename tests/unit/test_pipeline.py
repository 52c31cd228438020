"""The decision pipeline (agent/pipeline/): composition of matcher, detectors, policy,
guards and planning, driven the way the daemon drives it (observe, decide, complete)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import Config, parse_config
from agent.detect.catalog import load_catalog
from agent.detect.matcher import Matcher
from agent.execute import Executor, RecordingRunner
from agent.model import LogLine, MetricSample, Outcome, Step, StepResult
from agent.pipeline.api import Decision, Event
from agent.pipeline.build import build_pipeline
from agent.pipeline.decide import DecisionPipeline
from agent.report.status_file import CYCLE_FILE
from agent.state import SafetyState
from tests.unit._tmpfs import fill_up, small_tmpfs

T0 = 1_790_000_000.0
HUNG = "INFO: task nfsd:1234 blocked for more than 120 seconds."


@functools.cache
def matcher() -> Matcher:
    """The built-in catalog, compiled once for the module (it takes a few 100 ms)."""
    catalog, errors = load_catalog(None)
    assert errors == []
    return Matcher(catalog)


def make(tmp_path: Path, raw: dict[str, Any] | None = None, *,
         start: float = T0) -> tuple[DecisionPipeline, FakeClock, Config]:
    raw = dict(raw or {})
    agent = {"hostname": "nas-a1", "state_dir": str(tmp_path / "state"),
             "signatures_dir": str(tmp_path / "no-signatures"), **raw.pop("agent", {})}
    config, errors = parse_config({"agent": agent, **raw}, "test.toml")
    assert errors == []
    clock = FakeClock(start)
    return (build_pipeline(config, clock, check_preconditions=False, matcher=matcher()),
            clock, config)


def kline(text: str, t: float, facility: int = 0) -> LogLine:
    return LogLine(source="kmsg", text=text, t=t, facility=facility)


def oom_kill(p: DecisionPipeline, t: float, memcg: str, task: str, pid: int,
             facility: int = 0) -> list[Event]:
    """The two lines the kernel prints for an OOM kill (5.0+): the summary, the kill."""
    events = list(p.observe(kline(
        f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
        f"oom_memcg={memcg},task_memcg={memcg},task={task},pid={pid},uid=109", t, facility)))
    events += p.observe(kline(
        f"Memory cgroup out of memory: Killed process {pid} ({task}) total-vm:1024kB, "
        "anon-rss:512kB, file-rss:0kB, shmem-rss:0kB, UID:109 pgtables:8kB oom_score_adj:0",
        t, facility))
    return events


def run(pipeline: DecisionPipeline, clock: FakeClock, seconds: int,
        runner: Any = None) -> list[Event]:
    """Decide once a second for `seconds`, carrying decisions out with `runner`."""
    events: list[Event] = []
    for _ in range(seconds):
        got, decisions = pipeline.decide(clock.now())
        events += got
        for d in decisions:
            outcome = Executor(runner or RecordingRunner(), clock).run(d.plan)
            events += pipeline.complete(d, outcome)
        clock.advance(1)
    return events


class OkRunner:
    """Stands in for the subprocess runner: every step 'ran' and exited as it should."""

    executes = True

    def __init__(self) -> None:
        self.argv: list[tuple[str, ...]] = []

    def run(self, step: Any) -> StepResult:
        self.argv.append(step.argv)
        return StepResult(step.argv, step.ok_exit[0], 0.0)


def of(events: list[Event], kind: str, **match: Any) -> list[Event]:
    return [e for e in events if e.kind == kind
            and all(e.fields.get(k) == v for k, v in match.items())]


def test_kernel_hung_task_line_becomes_a_finding_and_a_dry_run_plan(tmp_path: Path) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage"}})
    found = p.observe(kline(HUNG, clock.now()))
    assert [(e.kind, e.fields["problem"], e.fields["subject"], e.fields["trusted"])
            for e in found] == [("finding", "hung-task", "nfsd", True)]
    events, decisions = p.decide(clock.now())
    assert [d.plan.action for d in decisions] == ["restart-service"]
    (d,) = decisions
    assert d.execute is False  # shipped mode: dry-run
    assert d.plan.steps[0].argv == ("systemctl", "restart", "--", "nfs-server.service")
    plan = of(list(events), "plan")[0]
    assert plan.fields["execute"] is False and plan.fields["problem"] == "hung-task"
    guards = [e.fields["guard"] for e in of(list(events), "verdict")]
    assert guards == ["mode", "trust", "maintenance", "cooldown", "budget", "flapping",
                      "fold", "approval", "lease"]
    # dry-run: the recording runner, nothing executed; nothing counted for budgets
    out = p.complete(d, Executor(RecordingRunner(), clock).run(d.plan))
    assert out[0].kind == "outcome" and out[0].fields["executed"] is False
    assert p.state.executions() == []


def test_userspace_kmsg_line_is_reported_untrusted_and_never_planned(tmp_path: Path) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage", "mode": "enforce"}})
    found = p.observe(kline(HUNG, clock.now(), facility=1))
    assert found[0].fields["trusted"] is False
    events = run(p, clock, 1200)
    assert not of(events, "plan")
    assert not of(events, "verdict")  # untrusted evidence is never proposed at all
    assert p.state.executions() == []


def test_a_forged_line_first_does_not_hold_the_real_one(tmp_path: Path) -> None:
    """Issue 7: a forged line first used to hold the ladder for the whole episode, so the
    real kernel line that followed got no answer."""
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage", "mode": "enforce"}})
    p.observe(kline(HUNG, clock.now(), facility=1))
    events = run(p, clock, 60)
    assert not of(events, "plan") and not of(events, "verdict")
    assert "untrusted (written from userspace): reported, never acted on" in p.sentence()
    p.observe(kline(HUNG, clock.now(), facility=0))
    _, decisions = p.decide(clock.now())
    assert [(d.plan.action, d.plan.subject) for d in decisions] == [
        ("restart-service", "nfs-server.service")]
    assert decisions[0].proposal.rung == 0


def test_enforce_records_the_execution_before_handing_the_plan_over(tmp_path: Path) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage", "mode": "enforce"}})
    p.observe(kline(HUNG, clock.now()))
    _, decisions = p.decide(clock.now())
    (d,) = decisions
    assert d.execute is True
    # write-ahead: counted (budget, cooldown) before anything ran
    assert [(e.action, e.subject) for e in p.state.executions()] == [
        ("restart-service", "nfs-server.service")]
    assert SafetyState(tmp_path / "state", now=clock.now()).executions()  # on disk


def test_node_restart_is_denied_without_a_coordinator_and_the_ladder_pages(
    tmp_path: Path
) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage"}})
    p.observe(kline(HUNG, clock.now()))
    for _ in range(200):
        p.observe(MetricSample(clock.now(), {"load1_per_cpu": 9.0, "procs_blocked": 20},
                               blocked_tasks=("nfsd",)))
        clock.advance(1)
    events = run(p, clock, 400)
    lease = of(events, "verdict", action="node-restart", guard="lease")
    assert len(lease) == 1 and lease[0].fields["allow"] is False
    assert "no coordinator" in lease[0].fields["reason"]
    page = of(events, "plan", action="page", problem="storage-hang")
    assert page and page[0].t == lease[0].t  # climbed in the same cycle


def test_incident_000_a_restart_another_ladder_just_ran_counts_for_storage_hang(
    tmp_path: Path
) -> None:
    """hung-task restarted nfs-server; when storage-hang is recognised 2 min later its own
    restart rung is in cooldown: that run counts, and the ladder climbs 300 s after it,
    not after the cooldown ran out (incident 000: the node restart was the fix)."""
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage", "mode": "enforce"}})
    t0 = clock.now()
    p.observe(kline(HUNG, clock.now()))
    events = run(p, clock, 1, OkRunner())
    assert [e.fields["problem"] for e in of(events, "plan")] == ["hung-task"]
    for _ in range(200):  # load and D-state tasks: storage-hang after load-high's 120 s
        p.observe(MetricSample(clock.now(), {"load1_per_cpu": 9.0, "procs_blocked": 20},
                               blocked_tasks=("nfsd",)))
        events += run(p, clock, 1, OkRunner())
    cooldown = of(events, "verdict", action="restart-service", problem="storage-hang",
                  guard="cooldown")
    assert cooldown and cooldown[0].fields["allow"] is False
    events += run(p, clock, 200, OkRunner())
    node = of(events, "verdict", action="node-restart", guard="lease")
    assert node, "storage-hang never climbed to node-restart"
    assert node[0].t == pytest.approx(t0 + 300, abs=2)  # restart at t0 + verify_s 300
    restarts = of(events, "plan", action="restart-service")
    assert len(restarts) == 1  # nfs-server was not restarted a second time


def test_observe_mode_denies_by_mode_and_plans_nothing(tmp_path: Path) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage", "mode": "observe"}})
    p.observe(kline(HUNG, clock.now()))
    events, decisions = p.decide(clock.now())
    assert decisions == []
    denied = of(list(events), "verdict", allow=False)
    # every rung is denied by the mode, the page included: observe reports, never acts
    assert [(e.fields["action"], e.fields["guard"]) for e in denied] == [
        ("restart-service", "mode"), ("page", "mode")]
    assert p.sentence().startswith("no action: restart-service nfs-server.service denied")


def test_a_plan_the_remediation_refuses_is_a_plan_denial_and_the_ladder_climbs(
    tmp_path: Path
) -> None:
    # a site ladder that tries to block the port the kernel line names
    ladder = {"rungs": [{"action": "block-addresses", "subject": "{subject}", "verify_s": 300},
                        {"action": "page", "subject": "{problem} {subject} on {host}"}]}
    p, clock, _ = make(tmp_path, {"agent": {"role": "mail"}, "policy": {"syn-flood": ladder}})
    p.observe(kline("TCP: request_sock_TCP: Possible SYN flooding on port 25. "
                    "Sending cookies.", clock.now()))
    events, decisions = p.decide(clock.now())
    refused = of(list(events), "verdict", guard="plan")
    assert refused and refused[0].fields["allow"] is False
    assert "'25' is not an IP address" in refused[0].fields["reason"]
    assert [d.plan.action for d in decisions] == ["page"]
    assert decisions[0].plan.steps[0].argv[-1].startswith("PAGE host=nas-a1 problem=syn-flood")


def test_maintenance_set_by_another_process_is_seen_at_the_next_cycle(tmp_path: Path) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage", "mode": "enforce"}})
    operator = SafetyState(tmp_path / "state", now=clock.now())  # `nodewarden maintenance`
    operator.set_maintenance(clock.now(), 7200, "kernel upgrade", by="alice")
    p.observe(kline(HUNG, clock.now()))
    events, decisions = p.decide(clock.now())
    assert decisions == []
    (deny,) = of(list(events), "verdict", allow=False)
    assert deny.fields["guard"] == "maintenance" and "kernel upgrade" in deny.fields["reason"]
    operator.clear_maintenance()
    clock.advance(400)  # the held rung is retried after retry_s
    events, decisions = p.decide(clock.now())
    assert [d.plan.action for d in decisions] == ["restart-service"]


def test_approval_from_another_process_lets_the_rung_run_and_is_consumed(tmp_path: Path) -> None:
    raw = {"agent": {"role": "storage", "mode": "enforce"}, "policy": {"hung-task": {
        "subjects": ["nfsd*"], "rungs": [
            {"action": "restart-service", "subject": "nfs-server.service",
             "needs_approval": True}]}}}
    p, clock, _ = make(tmp_path, raw)
    p.observe(kline(HUNG, clock.now()))
    events, decisions = p.decide(clock.now())
    assert decisions == []
    assert of(list(events), "verdict", guard="approval", allow=False)
    operator = SafetyState(tmp_path / "state", now=clock.now())  # `nodewarden approve`
    operator.approve("restart-service", "nfs-server.service", clock.now(), 3600, by="bob")
    clock.advance(301)
    events, decisions = p.decide(clock.now())
    assert [d.plan.action for d in decisions] == ["restart-service"]
    assert SafetyState(tmp_path / "state", now=clock.now()).approvals(clock.now()) == []


def test_complete_after_a_failed_run_climbs_at_once(tmp_path: Path) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage", "mode": "enforce"}})
    p.observe(kline(HUNG, clock.now()))
    _, (d,) = p.decide(clock.now())
    failed = Outcome(d.plan.action, d.plan.subject, ok=False, executed=True,
                     detail="step 1 failed")
    out = p.complete(d, failed)
    assert out[0].fields["ok"] is False
    clock.advance(1)
    _, decisions = p.decide(clock.now())
    assert [x.plan.action for x in decisions] == ["page"]  # not 300 s later


def test_flapping_guard_pages_once_per_episode(tmp_path: Path) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"mode": "enforce"}})
    for when in (1000.0, 2000.0, 3000.0):  # three earlier "successful" fixes
        p.state.record_fix("oom-kill", "dovecot", clock.now() - when, "restart-service",
                           target="dovecot.service")
    oom_kill(p, clock.now(), "/system.slice/dovecot.service", "dovecot", 812)
    events = run(p, clock, 5, OkRunner())
    flap = of(events, "verdict", guard="flapping", allow=False)
    assert [e.fields["action"] for e in flap] == ["restart-service"]
    pages = of(events, "plan", action="page")
    assert len(pages) == 1 and "page a person" in pages[0].fields["reason"]


def test_the_status_file_holds_the_sentence_and_the_findings(tmp_path: Path) -> None:
    config, errors = parse_config({"agent": {
        "role": "storage", "hostname": "nas-a1", "state_dir": str(tmp_path / "state"),
        "signatures_dir": str(tmp_path / "none")}}, "t.toml")
    assert errors == []
    clock = FakeClock(T0)
    p = build_pipeline(config, clock, check_preconditions=False, matcher=matcher())
    p.observe(kline(HUNG, clock.now()))
    p.decide(clock.now())
    body = json.loads((tmp_path / "state" / CYCLE_FILE).read_text())
    assert body["sentence"].startswith("acting: restart-service nfs-server.service (dry-run)")
    assert [(f["problem"], f["subject"]) for f in body["findings"]] == [("hung-task", "nfsd")]


@pytest.mark.parametrize("mode", ["dry-run", "enforce"])
def test_decision_carries_every_verdict_and_the_plan_it_allowed(
    tmp_path: Path, mode: str
) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"role": "storage", "mode": mode}})
    p.observe(kline(HUNG, clock.now()))
    _, decisions = p.decide(clock.now())
    (d,) = decisions
    assert isinstance(d, Decision)
    assert d.execute is (mode == "enforce")
    assert all(v.allow for v in d.verdicts)
    assert d.verdicts[-1].guard == "plan"


def test_idle_only_while_nothing_fires(tmp_path: Path) -> None:
    """The daemon decides every 10 s instead of every second while the pipeline is idle."""
    pipeline, clock, _ = make(tmp_path, {"agent": {"role": "storage"}})
    assert pipeline.idle()
    pipeline.observe(kline(HUNG, clock.now()))
    assert not pipeline.idle()
    assert [f.problem for f in pipeline.active()] == ["hung-task"]


def test_precondition_checks_are_capped_below_the_watchdog() -> None:
    """decide() runs on the loop: a site check asking for 30 s gets PRECONDITION_TIMEOUT_S."""
    from agent.model import Step
    from agent.pipeline.contexts import PRECONDITION_TIMEOUT_S, CappedRunner

    seen: list[float] = []

    class Recording:
        def run(self, step: Step) -> StepResult:
            seen.append(step.timeout_s)
            return StepResult(step.argv, 0, 0.0)

    runner = CappedRunner(Recording(), PRECONDITION_TIMEOUT_S)
    runner.run(Step(("peer-check",), 30.0))
    runner.run(Step(("systemctl", "show"), 1.0))
    assert seen == [PRECONDITION_TIMEOUT_S, 1.0]
    assert PRECONDITION_TIMEOUT_S < 15.0  # half of the unit's WatchdogSec=30s


def test_a_reload_with_the_same_rules_keeps_what_fires(tmp_path: Path) -> None:
    """SIGHUP rebuilds the pipeline; a hung-task line is not printed again, so the
    finding must survive the reload, unless the rules themselves changed."""
    old, clock, _ = make(tmp_path, {"agent": {"role": "storage"}})
    old.observe(kline(HUNG, clock.now()))
    same, _, _ = make(tmp_path, {"agent": {"role": "storage", "mode": "observe"}})
    assert same.carry_over(old)
    assert [f.problem for f in same.active()] == ["hung-task"]
    other, _, _ = make(tmp_path, {"agent": {"role": "mail"}})  # other rules
    assert not other.carry_over(old)
    assert other.active() == []


# --------------------------------------------------------------------------- issue 7
def test_an_oom_kill_restarts_the_service_its_report_names_not_its_process_name(
        tmp_path: Path) -> None:
    p, clock, _ = make(tmp_path, {"agent": {"mode": "enforce"}})
    found = oom_kill(p, clock.now(), "/system.slice/dovecot.service", "reboot.target", 812)
    assert [(e.fields["problem"], e.fields["subject"]) for e in of(found, "finding")] == [
        ("oom-kill", "dovecot.service")]
    events = run(p, clock, 2, OkRunner())
    assert [(e.fields["action"], e.fields["subject"]) for e in of(events, "plan")] == [
        ("restart-service", "dovecot.service")]
    user = oom_kill(p, clock.now(), "/user.slice/user-1000.slice/session-4.scope",
                    "reboot.target", 813)
    assert [(e.fields["problem"], e.fields["subject"]) for e in of(user, "finding")] == [
        ("oom-kill-no-unit", "user-1000.slice")]
    events = run(p, clock, 2, OkRunner())
    assert [e.fields["action"] for e in of(events, "plan")] == ["page"]


def test_an_untrusted_oom_report_is_never_placed(tmp_path: Path) -> None:
    """Lines written from userspace do not reach the report correlation at all."""
    p, clock, _ = make(tmp_path, {"agent": {"mode": "enforce"}})
    found = oom_kill(p, clock.now(), "/system.slice/sshd.service", "sshd", 1, facility=1)
    assert [(e.fields["subject"], e.fields["trusted"]) for e in of(found, "finding")] == [
        ("sshd", False)]
    assert not of(run(p, clock, 5, OkRunner()), "plan")


@pytest.fixture
def full_fs() -> Iterator[Path]:
    with small_tmpfs("256k") as mnt:
        yield mnt


def fill(directory: Path) -> None:
    fill_up(directory / "filler")


@pytest.mark.realparts
def test_on_a_full_state_disk_actions_are_denied_and_the_page_still_goes_out(
        full_fs: Path) -> None:
    """The write-ahead record applied to pages: a full state file system denied every
    page. Now a page goes out (and says it could not be recorded); any other action whose
    execution cannot be recorded does not run, and the page says why."""
    p, clock, _ = make(full_fs, {"agent": {"mode": "enforce"}})
    fill(full_fs)
    oom_kill(p, clock.now(), "/system.slice/dovecot.service", "dovecot", 812)
    events, decisions = p.decide(clock.now())
    [denied] = of(list(events), "verdict", action="restart-service", allow=False)
    assert denied.fields["guard"] == "budget" and "No space left" in denied.fields["reason"]
    pages = [d for d in decisions if d.plan.action == "page"]
    assert pages, "a page always goes out, even when it cannot be recorded"
    message = pages[0].proposal.params["message"]
    assert "restart-service dovecot.service denied" in message
    assert "this page could not be recorded" in message
    notes = [e for e in events if e.kind == "note"]
    assert any("goes out anyway" in e.fields["text"] for e in notes)


def test_an_episode_verified_over_is_not_proposed_again_in_the_same_cycle(
        tmp_path: Path) -> None:
    """The policy steps again in a cycle where another finding proposes something; the
    finding whose episode just ended must not get a new position (red-team M7)."""
    p, clock, _ = make(tmp_path, {"agent": {"mode": "enforce"}})
    oom_kill(p, clock.now(), "/system.slice/dovecot.service", "dovecot", 812)
    run(p, clock, 120, OkRunner())  # restarted; verified at +120 s, in the next cycle ...
    oom_kill(p, clock.now(), "/system.slice/rspamd.service", "rspamd", 813)  # ... with this
    events = run(p, clock, 2, OkRunner())
    assert [(e.fields["action"], e.fields["subject"]) for e in of(events, "plan")] == [
        ("restart-service", "rspamd.service")]
    assert [e.fields["subject"] for e in of(events, "resolved")] == ["dovecot.service"]
    assert not of(events, "verdict", allow=False)


class PagerDownOnce:
    """Runs every step OK, but the paging command fails the first time (a gateway down)."""

    executes = True

    def __init__(self) -> None:
        self.failed = False

    def run(self, step: Step) -> StepResult:
        if step.argv[0] == "/usr/local/bin/page-oncall" and not self.failed:
            self.failed = True
            return StepResult(argv=step.argv, exit_code=1, duration_s=0.0,
                              stderr="502 Bad Gateway")
        return StepResult(argv=step.argv, exit_code=0, duration_s=0.0)


def test_a_page_that_did_not_go_out_is_tried_again(tmp_path: Path) -> None:
    """Red-team H5: a failed paging command used to be the end of it (the fold guard took
    it as sent, and a page is the ladder's last rung)."""
    p, clock, _ = make(tmp_path, {"agent": {"mode": "enforce"}, "actions": {"page": {
        "command": ["/usr/local/bin/page-oncall", "{subject}"]}}})
    p.observe(kline("md/raid1:md0: Disk failure on sdb1, disabling device.", clock.now()))
    events = run(p, clock, 400, PagerDownOnce())
    outcomes = of(events, "outcome", action="page")
    assert [e.fields["ok"] for e in outcomes] == [False, True]
    assert outcomes[1].t - outcomes[0].t == pytest.approx(300)  # the ladder's retry_s
    assert any("FAILED" in e.fields["text"] and "tried again" in e.fields["text"]
               for e in of(events, "note"))
    assert not of(events, "verdict", guard="fold", allow=False)  # nothing folds into it


def test_a_page_the_worker_never_ran_is_tried_again(tmp_path: Path) -> None:
    """Review: a page the daemon's worker refused (full, or the same page still running)
    comes back as not executed; it has not gone out, so it is tried again like a failed
    one, and nothing folds into it meanwhile."""
    p, clock, _ = make(tmp_path, {"agent": {"mode": "enforce"}, "actions": {"page": {
        "command": ["/usr/local/bin/page-oncall", "{subject}"]}}})
    p.observe(kline("md/raid1:md0: Disk failure on sdb1, disabling device.", clock.now()))
    events: list[Event] = []
    refused = False
    for _ in range(400):
        got, decisions = p.decide(clock.now())
        events += got
        for d in decisions:
            if d.plan.action == "page" and not refused:
                refused = True  # what daemon/execution.py answers when the worker is full
                outcome = Outcome(d.plan.action, d.plan.subject, ok=False, executed=False,
                                  detail="not run: the worker is busy")
            else:
                outcome = Executor(OkRunner(), clock).run(d.plan)
            events += p.complete(d, outcome)
        clock.advance(1)
    outcomes = of(events, "outcome", action="page")
    assert [(e.fields["ok"], e.fields["executed"]) for e in outcomes] == [
        (False, False), (True, True)]
    assert outcomes[1].t - outcomes[0].t == pytest.approx(300)  # the ladder's retry_s
    assert not of(events, "verdict", guard="fold", allow=False)
