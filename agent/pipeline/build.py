"""Build the decision pipeline a driver runs (the daemon, `simulate`): the catalog, the
safety state in the state directory, the action contexts and the guard chain."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.clock import Clock
from agent.config import Config
from agent.detect.catalog import Catalog
from agent.detect.matcher import Matcher
from agent.guards import LeaseClient
from agent.pipeline.contexts import PRECONDITION_TIMEOUT_S, CappedRunner, action_contexts
from agent.pipeline.decide import DecisionPipeline
from agent.report.status_file import CYCLE_FILE, StatusFile
from agent.state import SafetyState
from remediations import ReadOnlyRunner


def build_pipeline(
    config: Config,
    clock: Clock,
    *,
    lease_client: LeaseClient | None = None,
    runner: ReadOnlyRunner | None = None,
    state_dir: Path | None = None,
    check_preconditions: bool = True,
    catalog: Catalog | None = None,
    matcher: Matcher | None = None,
    write_status: bool = True,
) -> DecisionPipeline:
    """The pipeline a driver runs, over the catalog load_config validated (or a matcher
    of one), with its safety state in the state directory. `runner` runs the
    preconditions' read-only checks (default: the subprocess runner, capped)."""
    if matcher is None:
        if catalog is None:
            raise ValueError("build_pipeline needs the loaded catalog or a matcher")
        matcher = Matcher(catalog)
    if runner is None and check_preconditions:
        from agent.execute import SubprocessRunner

        # decide() runs on the daemon's loop: a hung check (a peer_check, an HAProxy
        # socket) must not outlast a watchdog ping, so every check is capped
        runner = CappedRunner(SubprocessRunner(clock), PRECONDITION_TIMEOUT_S)
    directory = state_dir or config.agent.state_dir
    state = SafetyState(directory, now=clock.now())
    contexts = action_contexts(config, clock, runner, read_host=check_preconditions)
    if state_dir is not None:
        contexts = dataclasses.replace(
            contexts, base=dataclasses.replace(contexts.base, state_dir=state_dir))
    return DecisionPipeline(config, matcher=matcher, state=state, clock=clock,
                            contexts=contexts, lease_client=lease_client,
                            check_preconditions=check_preconditions,
                            status=StatusFile(directory / CYCLE_FILE, mode=config.agent.mode,
                                              role=config.agent.role,
                                              host=config.agent.hostname)
                            if write_status else None)
