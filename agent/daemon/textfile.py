"""The daemon's side of the metrics textfile (`[metrics] textfile`, docs/deploy.md
"Metrics"): what it counts from the events the loop emits, and when it writes.

The loop hands every event to `track()`, times each decision cycle through `timed()`,
calls `tick()` every turn and `stop()` on the way out. The file is written at the first
turn, then at most every `textfile_interval_s`, and at stop (the reporter then shown
disconnected). Counters count since the start and survive a reload (this object is the
daemon's, not the pipeline's). What fires is the loop's own view (CycleStatus: a reload
whose rules changed starts it over), with the severity each finding said.

A write that fails (a full disk, the directory missing) is logged once per failing
stretch and tried again at the next interval; it never stops the loop. Without
`metrics.textfile` nothing is written and nothing else is done than counting.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import remediations
from agent.clock import Clock
from agent.config import Loaded
from agent.daemon.status import CycleStatus
from agent.pipeline.api import Event
from agent.report.exposition import render
from agent.report.prometheus import (
    OTHER,
    AgentState,
    ReporterView,
    Vocabulary,
    families,
    guard_label,
    outcome_label,
    remove_textfile,
    severity_label,
    write_textfile,
)

if TYPE_CHECKING:
    from agent.report.reporter import ReporterStatus

log = logging.getLogger("nodewarden")


class ReporterSource(Protocol):
    """agent/daemon/reporting.py's Reporting, as far as the textfile reads it."""

    def status(self) -> ReporterStatus | None: ...


def vocabulary(loaded: Loaded) -> Vocabulary:
    """The problems the loaded rules and catalog can raise; the shipped actions."""
    problems = {r.problem for r in loaded.config.rules if getattr(r, "problem", None)}
    problems |= {s.problem for s in loaded.catalog.signatures if s.problem}
    return Vocabulary(frozenset(str(p) for p in problems), frozenset(remediations.names()))


class TextfileMetrics:
    """Counts what the textfile shows, and writes it when due."""

    def __init__(self, loaded: Loaded, status: CycleStatus, clock: Clock) -> None:
        self._status = status
        self._clock = clock
        self._started = clock.now()
        self._loaded = loaded
        self._vocab = vocabulary(loaded)
        #: (problem label, severity label) that fired since the start: shown, 0 once over
        self._fired: set[tuple[str, str]] = set()
        self._actions: dict[tuple[str, str], int] = {}
        self._denials: dict[str, int] = {}
        self._last_cycle: float | None = None
        self._cycle_s: float | None = None
        self._next_write = 0.0
        self._failing: Path | None = None
        self._written: Path | None = None

    # ------------------------------------------------------------------ counting
    def track(self, event: Event) -> None:
        f = event.fields
        if event.kind == "outcome":
            label = (self._vocab.action(str(f.get("action", ""))),
                     outcome_label(f.get("ok"), f.get("executed")))
            self._actions[label] = self._actions.get(label, 0) + 1
        elif event.kind == "verdict" and f.get("allow") is False:
            guard = guard_label(f.get("guard"))
            self._denials[guard] = self._denials.get(guard, 0) + 1

    def timed(self, decide: Callable[[], None]) -> Callable[[], None]:
        """`decide`, recording when it ended and how long it took (when it did not raise:
        a cycle that fails is not a cycle the site's monitoring should see)."""
        @functools.wraps(decide)
        def cycle() -> None:
            began = self._clock.monotonic()
            decide()
            self._cycle_s = self._clock.monotonic() - began
            self._last_cycle = self._clock.now()

        return cycle

    def state(self, reporter: ReporterView | None) -> AgentState:
        """What the textfile shows now."""
        severity = self._status.severity
        counts: dict[tuple[str, str], int] = dict.fromkeys(self._fired, 0)
        for problem, subject in self._status.firing:
            label = (self._vocab.problem(problem),
                     severity_label(severity.get((problem, subject), OTHER)))
            counts[label] = counts.get(label, 0) + 1
        self._fired |= counts.keys()
        return AgentState(
            mode=self._loaded.config.agent.mode, started=self._started, firing=counts,
            actions=dict(self._actions), denials=dict(self._denials),
            last_cycle=self._last_cycle, last_cycle_duration_s=self._cycle_s,
            reporter=reporter)

    # ------------------------------------------------------------------ writing
    def tick(self, now: float, loaded: Loaded, reporting: ReporterSource) -> None:
        """Every loop turn (`now`: monotonic): the textfile when it is due."""
        if loaded is not self._loaded:  # a reload: its rules name the problems now
            self._loaded, self._vocab = loaded, vocabulary(loaded)
        settings = loaded.config.textfile
        if self._written is not None and self._written != settings.path:
            with contextlib.suppress(OSError):  # moved or turned off: none left to go stale
                remove_textfile(self._written)
            self._written, self._next_write = None, 0.0
        if settings.path is None or now < self._next_write:
            return
        self._next_write = now + settings.interval_s
        self._write(settings.path, self.state(_reporter(reporting, stopped=False)))

    def stop(self, loaded: Loaded, reporting: ReporterSource) -> None:
        """The last state, once the reporter has stopped (so: not connected)."""
        path = loaded.config.textfile.path
        if path is not None:
            self._write(path, self.state(_reporter(reporting, stopped=True)))

    def _write(self, path: Path, state: AgentState) -> None:
        try:
            write_textfile(path, render(families(state)))
        except OSError as exc:
            if self._failing != path:
                log.warning("cannot write the metrics textfile %s: %s (tried again each "
                            "interval, not said again until it works)", path, exc)
            self._failing = path
            return
        self._written = path
        if self._failing is not None:
            log.info("metrics textfile %s written again", path)
            self._failing = None


def _reporter(reporting: ReporterSource, *, stopped: bool) -> ReporterView | None:
    status = reporting.status()
    if status is None:
        return None
    return ReporterView(status.connected and not stopped, status.spool.depth,
                        status.last_ack)
