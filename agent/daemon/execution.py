"""How the daemon obtains its decision pipeline and carries out decisions.

The pipeline (agent/pipeline/decide.py, contract in agent/pipeline/api.py) only decides; the
daemon feeds it and carries decisions out here, in its execution worker thread.
Both imports are lazy so `nodewarden --help` does not load the catalog or the guards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from agent.clock import Clock
from agent.config import Loaded
from agent.daemon.workers import Worker
from agent.guards import LeaseClient
from agent.model import Outcome
from agent.pipeline.api import Decision, Event, Pipeline

log = logging.getLogger("nodewarden")


def build_pipeline(loaded: Loaded, clock: Clock, lease_client: LeaseClient | None = None
                   ) -> Pipeline:
    """The pipeline the daemon runs: the loaded catalog, safety state in state_dir, the
    coordinator's leases when it reports to one."""
    from agent.pipeline.build import build_pipeline as build

    return build(loaded.config, clock, catalog=loaded.catalog, lease_client=lease_client)


def execute_decision(decision: Decision, clock: Clock) -> Outcome:
    """Run (or, in dry-run, record) a decision's plan with its own step timeouts.

    Runs in the daemon's execution worker, never on the loop. The executor is the same
    object in both modes; only the runner differs (docs/architecture.md, safety property 4:
    dry-run cannot diverge).
    """
    from agent.execute import Executor, RecordingRunner, SubprocessRunner

    runner = SubprocessRunner(clock) if decision.execute else RecordingRunner()
    outcome: Outcome = Executor(runner, clock).run(decision.plan)
    return outcome


#: executions queued or running at once; beyond that a decision is recorded as not run
MAX_EXECUTIONS = 4

Complete = Callable[[Decision, Outcome], Sequence[Event]]
DecisionRunner = Callable[[Decision, Clock], Outcome]


class Executions:
    """Decisions handed to one bounded execution worker thread, and their outcomes back.

    At most one execution per (action, subject) and MAX_EXECUTIONS in all; a decision
    beyond that is an outcome too ("not run: ..."). Results come back through the
    worker's queue and the loop's wake-up pipe; `collect()` turns them into events.
    """

    def __init__(self, wake: Callable[[], None], clock: Clock, run: DecisionRunner,
                 max_jobs: int = MAX_EXECUTIONS) -> None:
        self._clock = clock
        self._run = run
        self._max_jobs = max_jobs
        self._worker: Worker[tuple[str, str], Outcome] = Worker(
            "execute", wake, threads=1, max_jobs=max_jobs)
        self.pending: dict[tuple[str, str], Decision] = {}

    @property
    def in_flight(self) -> int:
        return self._worker.in_flight

    def dispatch(self, decision: Decision, complete: Complete) -> Sequence[Event]:
        """Hand `decision` to the worker; events only when it is refused."""
        plan = decision.plan
        key = (plan.action, plan.subject)
        mode = "execute" if decision.execute else "dry-run"
        clock, run = self._clock, self._run
        if self._worker.submit(key, lambda: run(decision, clock)):
            self.pending[key] = decision
            log.info("%s %s: handed to the execution worker (%s)", plan.action, plan.subject,
                     mode)
            return ()
        why = ("the same action on the same subject is still running"
               if self._worker.busy(key) else f"{self._max_jobs} executions already queued")
        outcome = Outcome(plan.action, plan.subject, ok=False, executed=False,
                          detail=f"not run: {why}")
        return complete(decision, outcome)

    def collect(self, complete: Complete) -> list[Event]:
        """The outcomes that came back (an executor that raised is a failed outcome)."""
        events: list[Event] = []
        for result in self._worker.drain():
            decision = self.pending.pop(result.key)
            outcome = result.value
            if outcome is None:
                err = result.error
                outcome = Outcome(decision.plan.action, decision.plan.subject, ok=False,
                                  executed=decision.execute,
                                  detail=f"executor error: {type(err).__name__}: {err}")
                log.error("%s %s: %s", decision.plan.action, decision.plan.subject,
                          outcome.detail)
            events += complete(decision, outcome)
        return events

    def stop(self, grace_s: float) -> None:
        """Take no more; wait up to `grace_s` for running plans (their steps have their
        own timeouts too) and say what is left running."""
        if self.in_flight:
            log.info("stopping: waiting up to %g s for %d running remediation(s)",
                     grace_s, self.in_flight)
        if not self._worker.shutdown(grace_s):
            log.error("stopping with a remediation still running: %s",
                      ", ".join(f"{a} {s}" for a, s in self.pending))
