"""How the daemon obtains its decision pipeline and carries out decisions.

The pipeline (agent/pipeline/decide.py, contract in agent/pipeline/api.py) only decides; the
daemon feeds it and carries decisions out here, in its execution worker thread.
Both imports are lazy so `nodewarden --help` does not load the catalog or the guards.
"""

from __future__ import annotations

from agent.clock import Clock
from agent.config import Loaded
from agent.model import Outcome
from agent.pipeline.api import Decision, Pipeline


def build_pipeline(loaded: Loaded, clock: Clock) -> Pipeline:
    """The pipeline the daemon runs: the loaded catalog, safety state in state_dir."""
    from agent.pipeline.build import build_pipeline as build

    return build(loaded.config, clock, catalog=loaded.catalog)


def execute_decision(decision: Decision, clock: Clock) -> Outcome:
    """Run (or, in dry-run, record) a decision's plan with its own step timeouts.

    Runs in the daemon's execution worker, never on the loop. The executor is the same
    object in both modes; only the runner differs (DESIGN.md: dry-run cannot diverge).
    """
    from agent.execute import Executor, RecordingRunner, SubprocessRunner

    runner = SubprocessRunner(clock) if decision.execute else RecordingRunner()
    outcome: Outcome = Executor(runner, clock).run(decision.plan)
    return outcome
