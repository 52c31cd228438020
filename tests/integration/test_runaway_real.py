"""Incident 003 on a real systemd: a CPU-burning transient unit in a volatile nspawn
container is seen by the metrics sampler (run inside the container, on its real cgroup
tree and /proc), throttled by throttle-unit and stopped by stop-process `unit=`.

The container's systemd keeps its units on the cgroup v2 `unified` mount of this hybrid
host (no cpu controller there: CPUQuota is recorded but not enforced), which is exactly the
layout the sampler must find by itself.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import pytest

from agent.clock import SystemClock
from agent.execute import Executor
from agent.model import Outcome, Plan
from remediations import ActionContext, build_plan, load
from tests.integration._nspawn import REPO, Container, NsenterRunner, booted_container

pytestmark = pytest.mark.realparts

BURN = "nwburn.service"
STUBBORN = "nwstubborn.service"
LOOP = "while :; do :; done"

#: run inside the container: the real sampler on the real /sys/fs/cgroup and /proc.
#: Measuring a CPU share needs real time to pass: one scan, 1 s of burning, one scan.
SAMPLE = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from agent.clock import SystemClock
from agent.config import MetricsSettings
from agent.sources.cgroups import UnitCpu
from agent.sources.metrics import MetricsSampler
units = UnitCpu()  # the defaults: /sys/fs/cgroup and /proc
s = MetricsSampler(MetricsSettings(filesystems=(), mailq_command=()), SystemClock(),
                   background=False, unit_cpu_interval_s=0.5, unit_cpu=units)
time.sleep(1.0)
m = s.sample()
json.dump({{"values": dict(m.values), "details": dict(m.details),
           "layout": [units.layout.base, units.layout.kind]}}, sys.stdout)
"""


def ctx() -> ActionContext:
    return ActionContext(hostname="nwtest-host", state_dir=REPO / "nonexistent",
                         agent_pid=os.getpid(), clock=SystemClock())


def run_in(c: Container, plan: Plan) -> Outcome:
    return Executor(NsenterRunner(c), SystemClock()).run(plan)


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    with booted_container(f"nwrun{os.getpid() % 100000}") as c:
        print(f"\ncontainer {c.name} booted in {c.boot_seconds:.2f}s (leader pid {c.leader})")
        yield c


def burn(c: Container, unit: str, script: str) -> int:
    """Start `script` as a transient service; its main PID (in the container)."""
    c.check("systemd-run", f"--unit={unit}", "--", "sh", "-c", script)
    pid = int(c.check("systemctl", "show", "-p", "MainPID", "--value", unit))
    assert pid > 0
    return pid


def test_sampler_sees_the_burning_unit_then_throttle_and_stop_end_it(
        container: Container) -> None:
    pid = burn(container, BURN, LOOP)
    got = json.loads(container.check(sys.executable, "-c", SAMPLE))
    assert got["layout"] == ["/sys/fs/cgroup/unified", "v2"]
    pct = got["values"][f"unit.{BURN}.cpu_pct"]
    assert pct > 50, got
    assert got["details"][f"unit.{BURN}.cpu_pct"].startswith(
        f"top process pid {pid} (/usr/bin/sh -c {LOOP}), "), got
    print(f"\n{BURN}: {pct:.0f}% of a core; {got['details']}")

    throttle = run_in(container, build_plan("throttle-unit", BURN, {}, ctx()))
    assert throttle.ok, throttle.detail + "".join(r.stderr for r in throttle.results)
    shown = container.check("systemctl", "show", "-p", "CPUQuotaPerSecUSec", "-p",
                            "IOWeight", BURN)
    assert "CPUQuotaPerSecUSec=200ms" in shown and "IOWeight=10" in shown

    params = {"unit": BURN, "grace": "5s"}
    context = ctx()
    assert load("stop-process").preconditions(BURN, params, context) == []
    stop = run_in(container, build_plan("stop-process", BURN, params, context))
    assert stop.ok, stop.detail + "".join(r.stderr for r in stop.results)
    assert [r.exit_code for r in stop.results] == [0, 1, 3]  # stopped; gone; inactive
    assert container.run("kill", "-0", str(pid)).returncode != 0  # the process is gone
    assert container.run("systemctl", "is-active", BURN).stdout.strip() == "inactive"


def test_a_unit_that_ignores_sigterm_is_killed_after_the_grace(container: Container) -> None:
    pid = burn(container, STUBBORN, f"trap '' TERM; {LOOP}")
    stop = run_in(container, build_plan("stop-process", STUBBORN,
                                        {"unit": STUBBORN, "grace": "1s"}, ctx()))
    assert stop.ok, stop.detail + "".join(r.stderr for r in stop.results)
    # the grace ran out (timeout: 124), SIGKILL ended it, and it is not active
    assert [r.exit_code for r in stop.results] == [124, 0, 3]
    assert container.run("kill", "-0", str(pid)).returncode != 0
    container.run("systemctl", "reset-failed", STUBBORN)


def test_preconditions_refuse_a_unit_that_is_not_running(container: Container) -> None:
    context = ActionContext(hostname="nwtest-host", state_dir=REPO / "nonexistent",
                            agent_pid=os.getpid(), clock=SystemClock(),
                            runner=NsenterRunner(container))
    assert load("stop-process").preconditions(
        "nwabsent.service", {"unit": "nwabsent.service"}, context) == [
        "unit nwabsent.service is not running: nothing to stop"]
