"""What the daemon does once, before it watches: its state directory, the safety state a
previous run left (docs/architecture.md, convention 9), and handing start-up's memory back."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from types import MappingProxyType

from agent.clock import Clock
from agent.daemon.reporting import Reporting
from agent.pipeline.api import Event, Pipeline
from agent.pipeline.intents import give_back_leases
from agent.pipeline.intents import reconcile_intents as reconcile

log = logging.getLogger("nodewarden")


def make_state_dir(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)


def reconcile_intents(
    state_dir: Path, clock: Clock, pipeline: Pipeline, reporting: Reporting
) -> tuple[list[Event], bool]:
    """Write-ahead intents left by a node restart: record what became of them
    ("rebooted" when the boot id changed), before anything is observed or decided; then
    the leases they held go back, through the pipeline, to the coordinator that granted
    them (or are left to run out: agent/pipeline/intents.py). Returns the events and
    whether it failed (a full or broken /var must not crash-loop the agent)."""
    events: list[Event] = []
    try:
        events += reconcile(state_dir, clock)
        events += give_back_leases(state_dir, pipeline, reporting.where, clock)
        return events, False
    except Exception as exc:
        log.exception("cannot reconcile node-restart intents (left for the next start)")
        return [*events, Event(clock.now(), "note", MappingProxyType({
            "text": f"node-restart intents not reconciled: {type(exc).__name__}: {exc}"}))], True


def release_startup_memory() -> None:
    """After start-up: what was built lives as long as the process (catalog, config,
    imports), so move it out of the collector's sight (full collections stay cheap: idle
    CPU), and hand the heap that start-up freed back to the kernel (glibc keeps it)."""
    gc.collect()
    gc.freeze()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass
