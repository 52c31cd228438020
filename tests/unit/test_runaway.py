"""Incident 003 through the shipped defaults: a unit at 95 % of a core for over five
minutes fires `runaway-unit` with the unit as subject; the ladder throttles it, then stops
the unit, then pages; the stop plan refuses protected units and the agent's own unit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import pytest

from agent.clock import FakeClock
from agent.detect.findings import Detectors
from agent.model import Finding, MetricSample, Proposal, Step, StepResult
from agent.policy.engine import Policy
from remediations import ActionContext, InvalidParams, ReadOnlyRunner, build_plan
from remediations.stop_process import StopProcess
from tests.unit._decide import T0, config

METRIC = "unit.provision.service.cpu_pct"
TOP = "top process pid 812 (/bin/sh /opt/provision/run.sh --all), 94% of a core"
PY = "/usr/bin/python3"


def unit_sample(t: float, pct: float, unit: str = "provision.service") -> MetricSample:
    name = f"unit.{unit}.cpu_pct"
    return MetricSample(t=t, values={name: pct, "load1_per_cpu": 1.0},
                        details=MappingProxyType({name: TOP}) if pct >= 50 else {})


def feed(det: Detectors, start: float, end: float, pct: float, every: float = 5.0,
         unit: str = "provision.service") -> list[tuple[float, Finding]]:
    changes = []
    t = start
    while t <= end:
        changes += [(t - T0, f) for f in det.on_metrics(unit_sample(t, pct, unit))]
        t += every
    return changes


def ctx(settings: Mapping[str, object] | None = None,
        protected: tuple[str, ...] = ("nodewarden.service", "ssh.service"),
        runner: ReadOnlyRunner | None = None) -> ActionContext:
    return ActionContext("mail1", Path("/var/lib/nodewarden"), 4242, FakeClock(),
                         runner=runner, settings=MappingProxyType(dict(settings or {})),
                         protected_units=protected, python=PY)


@pytest.fixture
def detectors() -> Detectors:
    cfg, errors = config({"agent": {"role": "generic"}})
    assert errors == []
    return Detectors(cfg.rules)


def test_95_pct_for_more_than_for_s_fires_with_the_unit_and_its_top_process(
        detectors: Detectors) -> None:
    changes = feed(detectors, T0, T0 + 295, 95.0)
    assert changes == []  # held for 295 s: not yet (for_s = 300)
    [(at, f)] = feed(detectors, T0 + 300, T0 + 300, 95.0)
    assert at == 300
    assert (f.problem, f.subject, f.state, f.rule, f.trusted) == (
        "runaway-unit", "provision.service", "firing", "runaway-unit", True)
    assert f.evidence == (f"{METRIC}=95 at {T0 + 300:.0f} (> 90); {TOP}",)


def test_a_spike_does_not_fire_and_it_resolves_below_50_for_120_s(
        detectors: Detectors) -> None:
    assert feed(detectors, T0, T0 + 200, 95.0) + feed(detectors, T0 + 205, T0 + 205, 40.0) == []
    assert feed(detectors, T0 + 210, T0 + 600, 95.0)[0][0] == 510  # pending restarts at 210
    assert feed(detectors, T0 + 605, T0 + 720, 70.0) == []  # above clear (50): still firing
    changes = feed(detectors, T0 + 725, T0 + 845, 3.0)
    assert [(at, f.state) for at, f in changes] == [(845, "resolved")]  # 120 s below 50


def test_policy_throttles_then_stops_the_unit_then_pages(detectors: Detectors) -> None:
    cfg, _ = config({"agent": {"role": "generic", "hostname": "mail1"}})
    policy = Policy(cfg.ladders, hostname="mail1")
    proposed: list[tuple[float, Proposal]] = []
    t = T0
    while t <= T0 + 1000:
        detectors.on_metrics(unit_sample(t, 95.0))  # throttling did not help
        for p in policy.step(detectors.active(), t):
            proposed.append((t - T0, p))
            policy.record(p, t, "executed")
        t += 5.0
    assert [(at, p.action, p.subject, dict(p.params)) for at, p in proposed] == [
        (300, "throttle-unit", "provision.service", {}),
        (600, "stop-process", "provision.service", {"unit": "provision.service"}),
        (720, "page", "runaway-unit provision.service on mail1", {}),
    ]
    throttle, stop = (build_plan(p.action, p.subject, p.params, ctx()) for _, p in proposed[:2])
    assert [s.argv for s in throttle.steps] == [
        ("systemctl", "set-property", "--runtime", "--", "provision.service", "CPUQuota=20%",
         "IOWeight=10")]
    assert [(s.argv, s.ok_exit) for s in (*stop.steps, *stop.verify)] == [
        (("timeout", "10", "systemctl", "stop", "--", "provision.service"), (0, 124)),
        (("systemctl", "kill", "--signal=SIGKILL", "--", "provision.service"), (0, 1)),
        (("systemctl", "is-active", "--quiet", "--", "provision.service"), (3,)),
    ]
    assert stop.summary == ("stop unit provision.service: SIGTERM to every process, SIGKILL "
                            "after 10s")


@pytest.mark.parametrize(("unit", "settings", "reason"), [
    ("ssh.service", {}, "ssh.service is a protected unit (matches 'ssh*')"),
    ("nodewarden.service", {}, "nodewarden.service is a protected unit"),
    ("init.scope", {}, "unit init.scope is not a .service"),
    ("session-4.scope", {}, "unit session-4.scope is not a .service"),
    ("systemd-journald.service", {}, "protected unit (matches 'systemd-*')"),
    ("dbus-broker.service", {}, "protected unit (matches 'dbus*')"),
    ("serial-getty@ttyS0.service", {}, "protected unit (matches '*getty*')"),
    ("dovecot.service", {"protect": ["dovecot*", "postfix*"]}, "matches 'dovecot*'"),
    ("user.slice", {}, "is not a .service"),
    ("-rf", {}, "is not a unit name"),
])
def test_stop_unit_refuses_protected_units(unit: str, settings: dict[str, object],
                                           reason: str) -> None:
    with pytest.raises(InvalidParams) as err:
        build_plan("stop-process", unit, {"unit": unit}, ctx(settings))
    assert reason in str(err.value)
    assert reason in StopProcess().preconditions(unit, {"unit": unit}, ctx(settings))[0]


def test_a_long_unit_subject_without_the_unit_param_says_how() -> None:
    with pytest.raises(InvalidParams, match="pass the parameter unit=NAME"):
        build_plan("stop-process", "provision.service", {}, ctx())


class ShowRunner:
    """Answers `systemctl show --property=ActiveState` with a fixed state (read-only)."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.seen: list[tuple[str, ...]] = []

    def run(self, step: Step) -> StepResult:
        self.seen.append(step.argv)
        return StepResult(step.argv, 0, 0.01, stdout=self.state + "\n")


def write_cgroup(proc: Path, pid: int, text: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(text)


@pytest.mark.parametrize(("state", "agent_cgroup", "expected"), [
    ("activating", "0::/system.slice/nodewarden.service\n", []),  # a oneshot script runs
    ("active", "0::/user.slice/user-0.slice/session-2.scope\n", []),
    ("inactive", "0::/system.slice/nodewarden.service\n",
     ["unit provision.service is not running: nothing to stop"]),
    ("active", "0::/system.slice/provision.service\n",
     ["provision.service is the unit the agent runs in"]),
])
def test_stop_unit_preconditions(tmp_path: Path, state: str, agent_cgroup: str,
                                 expected: list[str]) -> None:
    write_cgroup(tmp_path, 4242, agent_cgroup)
    runner = ShowRunner(state)
    got = StopProcess(proc=tmp_path).preconditions(
        "provision.service", {"unit": "provision.service"}, ctx(runner=runner))
    assert got == expected
    if "agent runs in" not in "".join(expected):
        assert runner.seen == [("systemctl", "show", "--property=ActiveState", "--value",
                                "--", "provision.service")]
