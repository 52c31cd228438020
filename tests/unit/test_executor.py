"""The Executor (one class for dry-run and execute) and the runners."""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.execute import Executor, RecordingRunner, SubprocessRunner
from agent.execute.runner import SAFE_ENV
from agent.model import Plan, Step, StepResult
from remediations import load, names
from remediations._docs import example_context

PY = sys.executable


class ScriptedRunner:
    """Executes nothing; answers each argv with a scripted exit code (0 when unscripted)
    and records what it was handed, like the real runner would have run it."""

    executes = True

    def __init__(self, codes: Mapping[str, list[int]] | None = None,
                 timeouts: tuple[str, ...] = ()) -> None:
        self.codes = {k: list(v) for k, v in (codes or {}).items()}
        self.timeouts = timeouts
        self.steps: list[Step] = []

    def run(self, step: Step) -> StepResult:
        self.steps.append(step)
        key = step.argv[0]
        timed_out = key in self.timeouts
        queue = self.codes.get(key, [])
        code = None if timed_out else (queue.pop(0) if queue else 0)
        return StepResult(step.argv, code, 0.0, stderr=f"{key} said no",
                          timed_out=timed_out)


def s(name: str, ok_exit: tuple[int, ...] = (0,)) -> Step:
    return Step((name,), 5.0, name, ok_exit=ok_exit)


PLAN = Plan("restart-service", "x.service", (s("a"), s("b"), s("c")), (s("v1"), s("v2")))


@pytest.mark.parametrize(("codes", "timeouts", "ran", "ok", "detail"), [
    ({}, (), "a b c v1 v2", True, "3 step(s) ok; verified (2 check(s))"),
    ({"b": [1]}, (), "a b", False,
     "step 2 of 3 failed: b exit 1: b said no; verification skipped"),
    ({}, ("a",), "a", False, "step 1 of 3 failed: a timed out: a said no; verification skipped"),
    ({"v1": [2]}, (), "a b c v1", False,
     "3 step(s) ok; verification failed: verify v1 exit 2: v1 said no"),
])
def test_executor_stops_at_the_first_failing_step(
        codes: dict[str, list[int]], timeouts: tuple[str, ...], ran: str, ok: bool,
        detail: str) -> None:
    runner = ScriptedRunner(codes, timeouts)
    outcome = Executor(runner, FakeClock()).run(PLAN)
    assert " ".join(st.argv[0] for st in runner.steps) == ran
    assert (outcome.ok, outcome.executed, outcome.detail) == (ok, True, detail)
    assert len(outcome.results) == len(runner.steps)


def test_ok_exit_lists_the_codes_that_count_as_success() -> None:
    plan = Plan("x", "y", (s("a", ok_exit=(3,)),))
    assert Executor(ScriptedRunner({"a": [3]}), FakeClock()).run(plan).ok
    assert not Executor(ScriptedRunner({"a": [0]}), FakeClock()).run(plan).ok


def test_verify_is_retried_on_the_injected_clock() -> None:
    clock = FakeClock()
    runner = ScriptedRunner({"v1": [1, 1, 0]})
    outcome = Executor(runner, clock, verify_attempts=3, verify_interval_s=5).run(PLAN)
    assert outcome.ok
    assert clock.monotonic() == 10.0
    assert [st.argv[0] for st in runner.steps].count("v1") == 3


def test_verify_that_never_passes_reports_the_last_round() -> None:
    clock = FakeClock()
    runner = ScriptedRunner({"v1": [1, 1, 7]})
    outcome = Executor(runner, clock, verify_attempts=3, verify_interval_s=5).run(PLAN)
    assert not outcome.ok
    assert outcome.detail.endswith("verification failed: verify v1 exit 7: v1 said no")
    assert clock.monotonic() == 10.0  # two waits between three rounds, none after the last


def test_dry_run_records_every_step_and_executes_nothing() -> None:
    runner = RecordingRunner()
    outcome = Executor(runner, FakeClock()).run(PLAN)
    assert runner.steps == [*PLAN.steps, *PLAN.verify]
    assert not outcome.executed and outcome.ok
    assert all(not r.ran for r in outcome.results)
    assert outcome.detail == "dry-run: nothing executed; would run 3 step(s) and 2 verify step(s)"


@pytest.mark.parametrize("action", names())
def test_dry_run_hands_the_runner_exactly_what_execute_runs(action: str) -> None:
    """docs/architecture.md, safety property 4: same Executor, same plan, only the runner
    differs."""
    r = load(action)
    params, _ = r.resolve(r.EXAMPLE.params)
    plan = r.plan(r.EXAMPLE.subject, params, example_context(r))
    recording, executing = RecordingRunner(), ScriptedRunner()
    Executor(recording, FakeClock()).run(plan)
    Executor(executing, FakeClock()).run(plan)
    assert recording.steps == executing.steps == [*plan.steps, *plan.verify]


# --------------------------------------------------------------------------- subprocess
def run(argv: list[str], timeout: float = 10, input_text: str | None = None,
        max_output: int = 65536) -> StepResult:
    return SubprocessRunner(max_output=max_output).run(
        Step(tuple(argv), timeout, input_text=input_text))


def test_subprocess_runner_captures_exit_code_and_output() -> None:
    r = run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(4)"])
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.ran) == (4, "out\n", "err\n",
                                                                     False, True)


def test_subprocess_runner_sanitizes_the_environment() -> None:
    r = run([PY, "-c", "import os, json; print(json.dumps(sorted(os.environ)))"])
    assert r.stdout.strip() == str(sorted(SAFE_ENV)).replace("'", '"')


def test_subprocess_runner_feeds_input_text() -> None:
    r = run([PY, "-c", "import sys; print(sys.stdin.read().upper())"], input_text="abc")
    assert r.stdout == "ABC\n"


def test_subprocess_runner_bounds_the_output() -> None:
    r = run([PY, "-c", "print('x' * 100000)"], max_output=1000)
    assert r.stdout.startswith("x" * 1000)
    assert r.stdout.endswith("[nodewarden: 99001 more bytes not kept]")


def test_subprocess_runner_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen(['sleep', '600'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(600)\n")
    r = run([PY, "-c", code], timeout=1.0)
    assert r.timed_out and r.exit_code == -9 and r.stdout == "started\n"
    grandchild = int(pidfile.read_text())
    # killed with its group: SIGKILL lands when the kernel next schedules it (on a busy
    # machine, after run() returned), so wait for its exit as an event (a pidfd turns
    # readable once the process has exited); then it is reaped by init or a zombie until
    # then, never running
    _wait_exit(grandchild)
    state = _state(grandchild)
    assert state in (None, "Z"), state


def test_a_command_that_leaves_a_child_holding_its_output_did_not_time_out(
    tmp_path: Path
) -> None:
    """A site command that starts something in the background and exits 0 succeeded; the
    child keeping stdout open must not turn that into a timeout (and a killed group)."""
    pidfile = tmp_path / "child"
    code = ("import subprocess\n"
            "p = subprocess.Popen(['sleep', '6'])\n"  # inherits stdout, outlives the step
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\n")
    r = run([PY, "-c", code], timeout=3.0)
    assert (r.exit_code, r.timed_out, r.stdout) == (0, False, "started\n")
    child = int(pidfile.read_text())
    assert _state(child) not in (None, "Z")  # left running, as the command meant
    os.kill(child, 9)


def _wait_exit(pid: int) -> None:
    """Until `pid` has exited (at most 30 s: a SIGKILL that never lands fails the test)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    try:
        select.select([fd], [], [], 30.0)
    finally:
        os.close(fd)


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat[stat.rindex(")") + 2]


def test_subprocess_runner_reports_a_missing_program() -> None:
    r = run(["/nonexistent/program"])
    assert r.exit_code == 127 and "cannot run" in r.stderr


def test_subprocess_runner_never_uses_a_shell() -> None:
    """The real runner never uses a shell: a shell metacharacter is just a byte."""
    r = run([PY, "-c", "import sys; print(sys.argv[1])", "$(id); rm -rf /"])
    assert r.stdout == "$(id); rm -rf /\n"
    assert os.path.exists("/")


def test_executor_needs_at_least_one_verify_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Executor(RecordingRunner(), FakeClock(), verify_attempts=0)
