"""The running agent: one `selectors` loop over every source (docs/architecture.md "Data flow").

    kmsg fd ─┐                      ┌─> audit log (state_dir/audit.jsonl), the reporter
    udev fd ─┼─> loop ─> pipeline ──┤
    probes  ─┤   (observe/decide)   └─> decisions ─> execution worker ─> complete()
    wake-up, timer: metrics, log files, decide, watchdog, STATUS=, heartbeats

The loop only reads and decides. Slow work runs elsewhere: plans in a bounded execution
worker (execution.py), probes in the scheduler's threads, filesystem use and the mail
queue off the loop (agent/sources/offloop.py). Signals only wake the loop (signals.py);
it stops or reloads (reload.py) between turns. Each turn ends with the audit log flushed;
the systemd watchdog is pinged from here only: a hung loop stops pinging.
"""

from __future__ import annotations

import functools
import logging
import selectors
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.clock import Clock
from agent.config import Loaded
from agent.daemon.execution import DecisionRunner, Executions, build_pipeline, execute_decision
from agent.daemon.logline import describe
from agent.daemon.overview import OVERVIEW_EVERY_S, OverviewLog
from agent.daemon.reload import keep_state_dir, refused_note, reloaded_note
from agent.daemon.reporting import Reporting
from agent.daemon.signals import SignalInbox
from agent.daemon.sources import Sources
from agent.daemon.startup import make_state_dir, reconcile_intents, release_startup_memory
from agent.daemon.status import CycleStatus
from agent.daemon.textfile import TextfileMetrics
from agent.daemon.watchdog import Notifier, WatchdogPinger, status_message
from agent.daemon.workers import WakeupPipe
from agent.guards import LeaseClient
from agent.model import MetricSample, Observation, ProbeResult
from agent.pipeline.api import Event, Pipeline
from agent.report.audit import AUDIT_FILE, AuditLog
from agent.schema import ConfigError

if TYPE_CHECKING:
    from agent.sources.logfile import LogFileFollower

log = logging.getLogger("nodewarden")

#: how long SIGTERM waits for a running remediation step (its own timeout bounds it too)
STOP_GRACE_S = 20.0
#: new observations bring the next decision forward, but no closer than this to the last
#: one: in a log flood the loop reads and matches, and decides ten times a second
DECIDE_MIN_GAP_S = 0.1
#: with nothing firing or new, decide this often (idle CPU stays low: bench/latency.py)
IDLE_DECIDE_S = 10.0

ConfigLoader = Callable[[], tuple[Loaded | None, list[ConfigError]]]
PipelineFactory = Callable[[Loaded, Clock, LeaseClient | None], Pipeline]


class Daemon:
    """`nodewarden run`: build, loop until told to stop, stop cleanly."""

    def __init__(
        self,
        loaded: Loaded,
        *,
        reload_config: ConfigLoader,
        clock: Clock,
        notifier: Notifier,
        watchdog_interval_s: float | None,
        pipeline_factory: PipelineFactory = build_pipeline,
        run_decision: DecisionRunner = execute_decision,
        overview_every_s: float = OVERVIEW_EVERY_S,
    ) -> None:
        self.loaded = loaded
        self.config = config = loaded.config
        self._reload_config = reload_config
        self.clock = clock
        self.notifier = notifier
        self._pipeline_factory = pipeline_factory
        self._run_decision = run_decision
        self.state_dir = config.agent.state_dir
        self.host = config.agent.hostname
        self.watchdog = WatchdogPinger(notifier, watchdog_interval_s, clock.monotonic())
        self.signals = SignalInbox()
        self._ready = False
        self.status = CycleStatus(notifier)
        self._overview = OverviewLog(overview_every_s)
        self.reporting = Reporting(config, self.state_dir, clock)  # [coordinator]: start()
        self.textfile = TextfileMetrics(loaded, self.status, clock)  # [metrics] textfile
        self._observed = False
        self._next_sample = 0.0
        self._next_decide = 0.0
        self._last_decide = 0.0
        self.turns = 0
        self.errors = 0
        # built in start()
        self.audit: AuditLog | None = None
        self.pipeline: Pipeline | None = None
        self.sources: Sources | None = None
        self._wake: WakeupPipe | None = None
        self._sel: selectors.BaseSelector | None = None
        self._exec: Executions | None = None

    # ================================================================== lifecycle
    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
        try:
            self.start()
            while not self.signals.stopping:
                self.turn()
        finally:
            # a stop signal that arrived mid-turn ended the loop before the turn's
            # _handle_signals(): say why we stop all the same (a pending HUP is moot)
            self.signals.drop_reloads()
            self._handle_signals()
            self.stop()
        return 0

    def start(self) -> None:
        """Everything before READY=1: state, safety state, sources, the kmsg backlog."""
        make_state_dir(self.state_dir)
        self.audit = AuditLog(self.state_dir / AUDIT_FILE, wall=self.clock.now)
        self.reporting.start()
        self._wake = WakeupPipe()
        self.signals.install(self._wake.write_fd)
        self._exec = Executions(self._wake.wake, self.clock, self._run_decision)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake.read_fd, selectors.EVENT_READ, self._on_wake)
        self.pipeline = self._pipeline_factory(self.loaded, self.clock, self.reporting.leases())
        done, failed = reconcile_intents(self.state_dir, self.clock, self.pipeline, self.reporting)
        self.errors += failed
        self._emit(done)  # safety state first (docs/architecture.md, convention 9)
        self.sources = Sources(self.clock, self.state_dir)
        self._log_changes(self.sources.apply(self.config), warn=True)
        self._register_sources()
        self._read_backlog()
        self._sample(self.clock.monotonic())
        self.textfile.timed(self._decide)()
        self.audit.flush()
        release_startup_memory()
        self.watchdog.ping_now(self.clock.monotonic())
        self.notifier.notify("READY=1\n" + status_message(self.summary()))
        self._ready = True
        log.info(
            "started in %s mode (config %s, state %s%s)", self.config.agent.mode,
            ", ".join(self.config.sources) or "<built-in defaults>", self.state_dir,
            f", watchdog every {self.watchdog.interval_s:g} s" if self.watchdog.enabled else "",
        )
        self._tell_overview()

    def stop(self) -> None:
        """Save the kmsg position, wait briefly for a running plan, flush, STOPPING=1."""
        self.notifier.notify("STOPPING=1")
        if self._exec is not None:
            self._exec.stop(STOP_GRACE_S)
            self._collect_executions()
        if self.sources is not None:
            self.sources.close()
        self.reporting.stop()
        self.textfile.stop(self.loaded, self.reporting)
        if self.audit is not None:
            self.audit.close()
        if self._sel is not None:
            self._sel.close()
        self.signals.restore()
        if self._wake is not None:
            self._wake.close()
        log.info("stopped after %d loop turns", self.turns)

    # ================================================================== the loop
    def turn(self) -> None:
        """One loop turn: wait for an fd or the next timer, handle it, flush the audit."""
        assert self._sel is not None and self.audit is not None
        now = self.clock.monotonic()
        timeout = max(0.0, self._next_deadline() - now)
        for key, _ in self._sel.select(timeout):
            self._guarded(key.data)
        self._handle_signals()
        now = self.clock.monotonic()
        if now >= self._next_sample:
            self._guarded(lambda: self._sample(now))
        if self._observed:
            self._next_decide = min(self._next_decide, self._last_decide + DECIDE_MIN_GAP_S)
        if now >= self._next_decide:
            self._guarded(self.textfile.timed(self._decide))
        self.watchdog.tick(self.clock.monotonic(), healthy=True)
        self._guarded(lambda: self.reporting.tick(now, self.summary))
        self._guarded(lambda: self.textfile.tick(now, self.loaded, self.reporting))
        self.audit.flush()
        self.turns += 1

    def _guarded(self, work: Callable[[], object]) -> None:
        """A failing handler is logged and counted; it never stops the loop (safety 8)."""
        try:
            work()
        except Exception:
            self.errors += 1
            log.exception("internal error in %s (the loop goes on)",
                          getattr(work, "__name__", "a handler"))

    def _next_deadline(self) -> float:
        deadlines = [d for d in (self._next_sample, self._next_decide, self.watchdog.next_due(),
                                 self.reporting.next_due()) if d is not None]
        src = self.sources
        if src is not None and src.probes is not None:
            wait = src.probes.next_due_in(self.clock.monotonic())
            if wait is not None:
                deadlines.append(self.clock.monotonic() + wait)
        return min(deadlines)

    # ================================================================== sources
    def _register_sources(self) -> None:
        """(Re)register the fds of the current sources with the selector."""
        assert self._sel is not None and self.sources is not None and self._wake is not None
        for key in list(self._sel.get_map().values()):
            if key.fd != self._wake.read_fd:
                self._sel.unregister(key.fileobj)
        src = self.sources
        if src.kmsg is not None:
            self._sel.register(src.kmsg.fileno(), selectors.EVENT_READ, self._on_kmsg)
        if src.udev is not None:
            self._sel.register(src.udev.fileno(), selectors.EVENT_READ, self._on_udev)
        if src.probes is not None:
            self._sel.register(src.probes.fileno(), selectors.EVENT_READ, self._on_probes)

    def _read_backlog(self) -> None:
        """The kmsg ring (all of it after a reboot) and the device inventory, before READY."""
        assert self.sources is not None and self.audit is not None
        if self.sources.kmsg is not None:
            before = self.status.kernel_records
            while self._on_kmsg():
                self.audit.flush()
            log.info("kmsg backlog: %d record(s) read", self.status.kernel_records - before)
        if self.sources.udev is not None:
            self._observe_all(self.sources.udev.inventory())

    def _on_kmsg(self) -> int:
        assert self.sources is not None and self.sources.kmsg is not None
        lines = self.sources.kmsg.read_available()
        self.status.kernel_records += len(lines)
        self._observe_all(lines)
        return len(lines)

    def _on_udev(self) -> None:
        assert self.sources is not None and self.sources.udev is not None
        self._observe_all(self.sources.udev.poll())

    def _on_probes(self) -> None:
        assert self.sources is not None and self.sources.probes is not None
        self._observe_all(self.sources.probes.drain())

    def _on_wake(self) -> None:
        assert self._wake is not None
        self._wake.drain()
        self._collect_executions()

    def _sample(self, now: float) -> None:
        """Every agent.sample_interval_s: metrics, log files, probes, reopens, overview."""
        assert self.sources is not None
        self._next_sample = now + self.config.agent.sample_interval_s
        src = self.sources
        # each source on its own: a sampler that fails must not blind the mail log
        if src.sampler is not None:
            self._guarded(self._sample_metrics)
        for follower in src.logs.values():
            self._guarded(functools.partial(self._poll_log, follower))
        probes = src.probes
        if probes is not None:
            self._guarded(lambda: probes.tick(now))
        if src.retries:
            reopened = src.reopen_due()
            if reopened:
                self._log_changes(reopened)
                self._register_sources()
        if self._ready:
            self._tell_overview()

    def _poll_log(self, follower: LogFileFollower) -> None:
        lines = follower.poll()
        self.status.log_lines += len(lines)
        self._observe_all(lines)

    def _sample_metrics(self) -> None:
        assert self.sources is not None and self.sources.sampler is not None
        sample = self.sources.sampler.sample()
        self.status.load1 = sample.values.get("load1", self.status.load1)
        self._observe_all([sample])

    def _observe_all(self, observations: Sequence[Observation]) -> None:
        assert self.pipeline is not None
        for obs in observations:
            events = self.pipeline.observe(obs)
            self._emit(events)
            if events or not isinstance(obs, MetricSample):
                self._observed = True
            if isinstance(obs, ProbeResult):
                self.status.probe_ok[obs.name] = obs.ok

    def _log_changes(self, changes: Sequence[str], *, warn: bool = False) -> None:
        """Source changes; with `warn`, also the followed files that cannot be read."""
        for change in changes:
            (log.warning if "UNAVAILABLE" in change else log.info)("%s", change)
        if warn and self.sources is not None:
            for warning in self.sources.warnings():
                log.warning("%s", warning)

    def _tell_overview(self) -> None:
        assert self.sources is not None
        seen = self.status.seen(self.sources, self.config.agent.mode)
        line = self._overview.due(self.clock.monotonic(), seen)
        if line is not None:
            log.info("%s", line)

    # ================================================================== decisions
    def _decide(self) -> None:
        assert self.pipeline is not None
        self._observed = False
        self._last_decide = self.clock.monotonic()
        # due with the next sample: one wake-up per interval, not two a few µs apart;
        # when nothing fires, every IDLE_DECIDE_S (a new finding brings it forward)
        self._next_decide = self._next_sample
        if self.pipeline.idle():
            self._next_decide = max(self._next_sample, self._last_decide + IDLE_DECIDE_S)
        events, decisions = self.pipeline.decide(self.clock.now())
        self._emit(events)
        assert self._exec is not None
        for decision in decisions:
            self.status.acting(decision)
            self._emit(self._exec.dispatch(decision, self.pipeline.complete))
        self._update_status()

    def _collect_executions(self) -> None:
        if self._exec is not None and self.pipeline is not None:
            self._emit(self._exec.collect(self.pipeline.complete))

    # ================================================================== events
    def _emit(self, events: Sequence[Event], level: int = logging.INFO) -> None:
        """Every event: to the audit log (with host and monotonic stamp) and one log line."""
        if not events:
            return
        assert self.audit is not None
        mono = self.clock.monotonic()
        for event in events:
            record = event.to_json()
            record["host"] = self.host
            record["mono"] = round(mono, 6)
            self.audit.append(record)
            self.reporting.emit(record)
            self.status.track(event)
            self.textfile.track(event)
            log.log(level, "%s", describe(event))

    def summary(self) -> str:
        """The cycle's sentence (docs/architecture.md, convention 3): STATUS=, the log."""
        return self.status.summary(getattr(self.pipeline, "sentence", None))

    def _update_status(self) -> None:
        self.status.publish(self.summary(), ready=self._ready)

    # ================================================================== signals, reload
    def _handle_signals(self) -> None:
        while (signum := self.signals.take()) is not None:
            if signum == signal.SIGHUP:
                self._guarded(self.reload)
            else:
                log.info("%s: stopping", signal.Signals(signum).name)
                self.signals.stopping = True

    def reload(self) -> None:
        """SIGHUP: validate the whole new configuration; on any error keep the old one."""
        self.notifier.notify("RELOADING=1")
        try:
            loaded, errors = self._reload_config()
            if loaded is None:
                self._emit([refused_note(errors, self.clock.now())], logging.ERROR)
                return
            self._apply(keep_state_dir(loaded, self.config))
        finally:
            self.notifier.notify("READY=1\n" + status_message(self.summary()))

    def _apply(self, loaded: Loaded) -> None:
        assert self.sources is not None
        new, old = loaded.config, self.config
        # Always rebuilt (signature files may have changed), and first: if it fails,
        # nothing new is applied yet. Guard state lives in the state directory; with the
        # same rules the findings carry over (kernel evidence is not read twice).
        # [coordinator] changes take effect at the next start.
        pipeline = self._pipeline_factory(loaded, self.clock, self.reporting.leases())
        kept = self.pipeline is not None and pipeline.carry_over(self.pipeline)
        self.loaded, self.config = loaded, new
        self.host = new.agent.hostname
        changes = self.sources.apply(new)
        self._register_sources()
        self.pipeline = pipeline
        if not kept:
            self.status.clear()
        self._emit([reloaded_note(new, old, changes, kept, self.clock.now())])
        self._log_changes([], warn=True)
