"""The Executor runs a Plan through a Runner: the same code for dry-run and execute.

Steps run in order; the first step whose exit code is not in its `ok_exit` (or that timed
out, or could not run) stops the plan, and the verification is skipped. When every step
succeeded, the verify steps run (optionally a few rounds apart, for effects that settle:
tenacity's Retrying on the injected clock).
With a RecordingRunner nothing runs, every step is recorded, and the Outcome says
`executed=False`: the printed plan and the executed plan are one value.
"""

from __future__ import annotations

from agent.clock import Clock, SystemClock
from agent.execute.runner import Runner
from agent.model import Outcome, Plan, Step, StepResult


def step_ok(step: Step, result: StepResult) -> bool:
    """A step that was not run (dry-run) does not fail; one that ran must exit as allowed."""
    if not result.ran:
        return True
    return not result.timed_out and result.exit_code in step.ok_exit


def describe_failure(index: str, result: StepResult) -> str:
    if result.timed_out:
        why = "timed out"
    elif result.exit_code is None:
        why = "did not exit"
    else:
        why = f"exit {result.exit_code}"
    tail = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return f"{index} {why}" + (f": {tail[-1][:200]}" if tail else "")


class Executor:
    """`run(plan) -> Outcome` with an injected runner and clock."""

    def __init__(
        self,
        runner: Runner,
        clock: Clock | None = None,
        verify_attempts: int = 1,
        verify_interval_s: float = 2.0,
    ) -> None:
        if verify_attempts < 1:
            raise ValueError("verify_attempts must be at least 1")
        self.runner = runner
        self._clock = clock or SystemClock()
        self._attempts = verify_attempts
        self._interval = verify_interval_s

    def run(self, plan: Plan) -> Outcome:
        executed = self.runner.executes
        results: list[StepResult] = []
        for i, step in enumerate(plan.steps, 1):
            result = self.runner.run(step)
            results.append(result)
            if not step_ok(step, result):
                detail = (f"step {i} of {len(plan.steps)} failed: "
                          f"{describe_failure(_show(step), result)}; verification skipped")
                return Outcome(plan.action, plan.subject, False, executed, tuple(results), detail)
        verify_failure = self._verify(plan, results)
        n, v = len(plan.steps), len(plan.verify)
        if not executed:
            detail = (f"dry-run: nothing executed; would run {n} step(s) "
                      f"and {v} verify step(s)")
            return Outcome(plan.action, plan.subject, True, False, tuple(results), detail)
        if verify_failure:
            return Outcome(plan.action, plan.subject, False, True, tuple(results),
                           f"{n} step(s) ok; verification failed: {verify_failure}")
        detail = f"{n} step(s) ok" + (f"; verified ({v} check(s))" if v else "; nothing to verify")
        return Outcome(plan.action, plan.subject, True, True, tuple(results), detail)

    def _verify(self, plan: Plan, results: list[StepResult]) -> str:
        """Rounds of the verify steps, `verify_interval_s` apart on the injected clock,
        until one passes or `verify_attempts` have run: the last round's failure, or ""."""
        def one_round() -> str:
            for step in plan.verify:
                result = self.runner.run(step)
                results.append(result)
                if not step_ok(step, result):
                    return describe_failure("verify " + _show(step), result)
            return ""

        if self._attempts == 1:
            return one_round()  # nothing to retry: the daemon does not carry tenacity for it
        import tenacity  # ~1 MiB and ~50 ms of imports, paid by the first plan that polls

        rounds = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_fixed(self._interval),
            retry=tenacity.retry_if_result(bool),
            sleep=self._clock.sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else "",
        )
        failure: str = rounds(one_round)
        return failure


def _show(step: Step) -> str:
    return step.description or " ".join(step.argv[:3])
