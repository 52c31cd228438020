"""The running agent: one `selectors` loop over every source (DESIGN.md "Data flow").

    kmsg fd ─┐
    udev fd ─┤                      ┌─> audit log (JSON lines, state_dir/audit.jsonl)
    probes  ─┼─> loop ─> pipeline ──┤
    wake-up ─┤   (observe/decide)   └─> decisions ─> execution worker ─> complete()
    timer   ─┘   metrics, log files, decide, watchdog, STATUS=

The loop itself only reads and decides. Slow work runs elsewhere: remediation plans in a
bounded worker thread (results come back through a queue and the wake-up pipe), probes in
the probe scheduler's threads, filesystem use and the mail queue in the sampler's own
workers. Signals only set a flag and wake the loop (`signal.set_wakeup_fd`); the loop
then stops (TERM/INT) or reloads (HUP) between turns. Each turn ends with the audit log
flushed, and the systemd watchdog is pinged from here only -- a hung loop stops pinging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import selectors
import signal
from collections.abc import Callable, Sequence
from types import FrameType, MappingProxyType
from typing import TYPE_CHECKING, Any

from agent.clock import Clock
from agent.config import Config, Loaded
from agent.daemon.execution import build_pipeline, execute_decision
from agent.daemon.sources import Sources
from agent.daemon.watchdog import Notifier, WatchdogPinger, status_message
from agent.daemon.workers import WakeupPipe, Worker
from agent.model import MetricSample, Observation, Outcome
from agent.pipeline.api import Decision, Event, Pipeline
from agent.report.audit import AUDIT_FILE, AuditLog
from agent.report.text import printable
from agent.schema import ConfigError

if TYPE_CHECKING:
    from agent.sources.logfile import LogFileFollower

log = logging.getLogger("nodewarden")

#: Config fields the sources own; a reload that changes only these keeps the pipeline
SOURCE_FIELDS = frozenset({"kmsg", "logs", "metrics", "udev", "probes", "sources"})
#: how long SIGTERM waits for a running remediation step (its own timeout bounds it too)
STOP_GRACE_S = 20.0
#: executions queued or running at once; beyond that a decision is recorded as not run
MAX_EXECUTIONS = 4
#: new observations bring the next decision forward, but no closer than this to the last
#: one: during a log flood the loop reads and matches, and decides ten times a second
DECIDE_MIN_GAP_S = 0.1
#: with nothing firing and nothing new observed, decide this often (safety state that
#: an operator changed is still picked up; idle CPU stays low — bench/latency.py)
IDLE_DECIDE_S = 10.0

ConfigLoader = Callable[[], tuple[Loaded | None, list[ConfigError]]]
PipelineFactory = Callable[[Loaded, Clock], Pipeline]
DecisionRunner = Callable[[Decision, Clock], Outcome]


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
        self._signals: list[int] = []
        self._stopping = False
        self._ready = False
        self._firing: set[tuple[str, str]] = set()
        self._last_load1: float | None = None
        self._last_status = ""
        self._cycle_actions: list[str] = []
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
        self._exec: Worker[tuple[str, str], Outcome] | None = None
        self._pending: dict[tuple[str, str], Decision] = {}

    # ================================================================== lifecycle
    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
        try:
            self.start()
            while not self._stopping:
                self.turn()
        finally:
            # a stop signal that arrived mid-turn ended the loop before the turn's
            # _handle_signals(): say why we stop all the same (a pending HUP is moot)
            self._signals = [s for s in self._signals if s != signal.SIGHUP]
            self._handle_signals()
            self.stop()
        return 0

    def start(self) -> None:
        """Everything before READY=1: state, safety state, sources, the kmsg backlog."""
        self._make_state_dir()
        self.audit = AuditLog(self.state_dir / AUDIT_FILE, wall=self.clock.now)
        self._wake = WakeupPipe()
        self._install_signals()
        self._exec = Worker("execute", self._wake.wake, threads=1, max_jobs=MAX_EXECUTIONS)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake.read_fd, selectors.EVENT_READ, self._on_wake)
        self._emit(self._reconcile_intents())  # safety state first (STYLE.md 9)
        self.pipeline = self._pipeline_factory(self.loaded, self.clock)
        self.sources = Sources(self.clock, self.state_dir)
        for change in self.sources.apply(self.config):
            log.info("%s", change)
        self._register_sources()
        self._read_backlog()
        self._sample(self.clock.monotonic())
        self._decide()
        self.audit.flush()
        # Everything built so far (catalog, config, imports) lives as long as the process:
        # move it out of the collector's sight, so full collections stay cheap (idle CPU).
        gc.collect()
        gc.freeze()
        self.watchdog.ping_now(self.clock.monotonic())
        self.notifier.notify("READY=1\n" + status_message(self.summary()))
        self._ready = True
        log.info(
            "started in %s mode (config %s, state %s%s)", self.config.agent.mode,
            ", ".join(self.config.sources) or "<built-in defaults>", self.state_dir,
            f", watchdog every {self.watchdog.interval_s:g} s" if self.watchdog.enabled else "",
        )

    def stop(self) -> None:
        """Save the kmsg position, wait briefly for a running plan, flush, STOPPING=1."""
        self.notifier.notify("STOPPING=1")
        if self._exec is not None:
            if self._exec.in_flight:
                log.info("stopping: waiting up to %g s for %d running remediation(s)",
                         STOP_GRACE_S, self._exec.in_flight)
            if not self._exec.shutdown(STOP_GRACE_S):
                log.error("stopping with a remediation still running: %s",
                          ", ".join(f"{a} {s}" for a, s in self._pending))
            self._collect_executions()
        if self.sources is not None:
            self.sources.close()
        if self.audit is not None:
            self.audit.close()
        if self._sel is not None:
            self._sel.close()
        self._restore_signals()
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
            self._guarded(self._decide)
        self.watchdog.tick(self.clock.monotonic(), healthy=True)
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
        deadlines = [self._next_sample, self._next_decide]
        due = self.watchdog.next_due()
        if due is not None:
            deadlines.append(due)
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
        assert self.sources is not None
        if self.sources.kmsg is not None:
            total = 0
            while True:
                lines = self.sources.kmsg.read_available()
                if not lines:
                    break
                total += len(lines)
                self._observe_all(lines)
                self.audit_flush()
            log.info("kmsg backlog: %d record(s) read", total)
        if self.sources.udev is not None:
            self._observe_all(self.sources.udev.inventory())

    def audit_flush(self) -> None:
        if self.audit is not None:
            self.audit.flush()

    def _on_kmsg(self) -> None:
        assert self.sources is not None and self.sources.kmsg is not None
        self._observe_all(self.sources.kmsg.read_available())

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
        """The timer: metrics, log files, due probes; runs every agent.sample_interval_s."""
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

    def _poll_log(self, follower: LogFileFollower) -> None:
        self._observe_all(follower.poll())

    def _sample_metrics(self) -> None:
        assert self.sources is not None and self.sources.sampler is not None
        sample = self.sources.sampler.sample()
        self._last_load1 = sample.values.get("load1", self._last_load1)
        self._observe_all([sample])

    def _observe_all(self, observations: Sequence[Observation]) -> None:
        assert self.pipeline is not None
        for obs in observations:
            events = self.pipeline.observe(obs)
            self._emit(events)
            if events or not isinstance(obs, MetricSample):
                self._observed = True

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
        for decision in decisions:
            self._dispatch(decision)
        self._update_status()

    def _dispatch(self, decision: Decision) -> None:
        """Hand a decision to the execution worker; a refusal is an outcome too."""
        assert self._exec is not None and self.pipeline is not None
        plan = decision.plan
        key = (plan.action, plan.subject)
        mode = "execute" if decision.execute else "dry-run"
        self._cycle_actions.append(f"{plan.action} {plan.subject} ({mode})")
        clock, run = self.clock, self._run_decision
        if self._exec.submit(key, lambda: run(decision, clock)):
            self._pending[key] = decision
            log.info("%s %s: handed to the execution worker (%s)", plan.action, plan.subject,
                     mode)
            return
        why = ("the same action on the same subject is still running"
               if self._exec.busy(key) else f"{MAX_EXECUTIONS} executions already queued")
        outcome = Outcome(plan.action, plan.subject, ok=False, executed=False,
                          detail=f"not run: {why}")
        self._emit(self.pipeline.complete(decision, outcome))

    def _collect_executions(self) -> None:
        if self._exec is None or self.pipeline is None:
            return
        for result in self._exec.drain():
            decision = self._pending.pop(result.key)
            outcome = result.value
            if outcome is None:
                err = result.error
                outcome = Outcome(decision.plan.action, decision.plan.subject, ok=False,
                                  executed=decision.execute,
                                  detail=f"executor error: {type(err).__name__}: {err}")
                log.error("%s %s: %s", decision.plan.action, decision.plan.subject,
                          outcome.detail)
            self._emit(self.pipeline.complete(decision, outcome))

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
            self._track(event)
            log.log(level, "%s", describe(event))

    def _track(self, event: Event) -> None:
        f = event.fields
        key = (str(f.get("problem", "")), str(f.get("subject", "")))
        if event.kind == "finding":
            if f.get("state", "firing") == "resolved":
                self._firing.discard(key)
            else:
                self._firing.add(key)
        elif event.kind == "resolved":
            self._firing.discard(key)

    def summary(self) -> str:
        """The cycle's sentence (STYLE.md 3), shown as systemd STATUS= and in the log."""
        load = "n/a" if self._last_load1 is None else f"{self._last_load1:.1f}"
        sentence = getattr(self.pipeline, "sentence", None)
        if sentence is not None:  # the pipeline's own cycle sentence (agent/pipeline/decide.py)
            return f"{sentence()}; load1 {load}"
        firing = f"{len(self._firing)} finding{'' if len(self._firing) == 1 else 's'} firing"
        if self._cycle_actions:
            return f"acting: {', '.join(self._cycle_actions)}; {firing}; load1 {load}"
        return f"no action: {firing}; load1 {load}"

    def _update_status(self) -> None:
        text = self.summary()
        self._cycle_actions.clear()
        if text != self._last_status and self._ready:
            self.notifier.notify(status_message(text))
            if not text.startswith("no action") or not self._last_status.startswith(
                "no action"
            ):
                log.info("%s", text)
        self._last_status = text

    # ================================================================== signals, reload
    def _install_signals(self) -> None:
        assert self._wake is not None
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake.write_fd, warn_on_full_buffer=False)
        self._old_handlers: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True  # also ends a start-up that has not reached the loop

    def _restore_signals(self) -> None:
        for signum, handler in getattr(self, "_old_handlers", {}).items():
            signal.signal(signum, handler)
        if hasattr(self, "_old_wakeup_fd"):
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._old_wakeup_fd)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                self._guarded(self.reload)
            else:
                log.info("%s: stopping", name)
                self._stopping = True

    def reload(self) -> None:
        """SIGHUP: validate the whole new configuration; on any error keep the old one."""
        self.notifier.notify("RELOADING=1")
        try:
            loaded, errors = self._reload_config()
            if loaded is None:
                for err in errors:
                    log.error("reload refused: %s", err)
                text = (f"reload refused: {len(errors)} error(s) in the configuration; "
                        "still running the previous one")
                self._emit([Event(self.clock.now(), "note", {
                    "text": text, "errors": [str(e) for e in errors]})], logging.ERROR)
                return
            self._apply(loaded)
        finally:
            self.notifier.notify("READY=1\n" + status_message(self.summary()))

    def _apply(self, loaded: Loaded) -> None:
        assert self.sources is not None
        new, old = loaded.config, self.config
        if new.agent.state_dir != old.agent.state_dir:
            log.warning("agent.state_dir changed to %s: takes effect at the next restart; "
                        "still using %s", new.agent.state_dir, self.state_dir)
            new = dataclasses.replace(
                new, agent=dataclasses.replace(new.agent, state_dir=old.agent.state_dir))
        # Always rebuilt: signature files may have changed even when agent.toml did not.
        # Built first: if it fails (a signature file changed since the check), nothing
        # of the new configuration has been applied yet. Guard state (budgets, cooldowns,
        # intents) lives in the state directory, so it survives; with the same rules the
        # findings carry over (kernel evidence is not read twice).
        loaded = dataclasses.replace(loaded, config=new)
        pipeline = self._pipeline_factory(loaded, self.clock)
        kept = self.pipeline is not None and pipeline.carry_over(self.pipeline)
        self.loaded, self.config = loaded, new
        self.host = new.agent.hostname
        changes = self.sources.apply(new)
        self._register_sources()
        self.pipeline = pipeline
        if not kept:
            self._firing.clear()
        what = "changed" if _decision_part(new) != _decision_part(old) else "unchanged"
        changes.append(f"pipeline rebuilt (mode {new.agent.mode}, policy settings {what}; "
                       f"{'findings kept' if kept else 'rules changed: findings start over'})")
        text = f"reloaded {', '.join(new.sources)}: " + ("; ".join(changes) or "no change")
        self._emit([Event(self.clock.now(), "note", {"text": text})])

    # ================================================================== state
    def _make_state_dir(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)

    def _reconcile_intents(self) -> list[Event]:
        """Write-ahead intents left by a node restart: record what became of them
        ("rebooted" when the boot id changed), before anything new is done."""
        from agent.pipeline.intents import reconcile_intents

        try:
            return list(reconcile_intents(self.state_dir, self.clock))
        except Exception as exc:  # a full or broken /var must not crash-loop the agent
            self.errors += 1
            log.exception("cannot reconcile node-restart intents (left for the next start)")
            return [Event(self.clock.now(), "note", MappingProxyType({
                "text": f"node-restart intents not reconciled: {type(exc).__name__}: {exc}"}))]


def _decision_part(config: Config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in SOURCE_FIELDS}


def describe(event: Event) -> str:
    """One log line that says what happened and why (control characters in the text of
    others, a process or user name, show as \\xNN: agent/report/text.py)."""
    return printable(_describe(event))


def _describe(event: Event) -> str:
    f = event.fields
    kind = event.kind
    if kind == "note":
        return str(f.get("text", ""))
    head = " ".join(str(f[k]) for k in ("action", "problem", "subject") if k in f)
    if kind == "verdict":
        word = "allow" if f.get("allow") else "deny"
        return f"verdict {head}: {f.get('guard')} {word}: {f.get('reason', '')}"
    if kind == "finding":
        trust = "" if f.get("trusted", True) else ", untrusted: written from userspace"
        evidence = f.get("evidence") or ()
        last = evidence[-1] if isinstance(evidence, list | tuple) and evidence else ""
        return f"finding {head} {f.get('state', 'firing')} ({f.get('severity', '?')}{trust})" + (
            f": {str(last)[:200]}" if last else "")
    if kind == "outcome":
        ok = "ok" if f.get("ok") else "FAILED"
        ran = "executed" if f.get("executed") else "not executed"
        return f"outcome {head}: {ok}, {ran}: {f.get('detail', '')}".rstrip(": ")
    extra = f.get("summary") or f.get("reason") or ""
    return f"{kind} {head}" + (f": {extra}" if extra else "")

