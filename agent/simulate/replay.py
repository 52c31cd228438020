"""Incident replays: a scenario through the real detectors, policy and guards.

    scenario = read_scenario(path)                            # ScenarioError(line, reason)
    loaded = scenario_config(scenario, config_file, mode)     # ConfigInvalid
    timeline = replay(scenario, loaded)                       # list[Event], t from the start

Nothing runs: the clock is a FakeClock, the safety state lives in a temporary directory,
preconditions (which may read the real host) are not checked, and every plan goes to the
Executor with a stand-in runner. In `dry-run` mode that is the RecordingRunner
(outcome `executed: false`); in `enforce` mode it is `SimulatedRunner`, which records each
step and reports it ran and exited 0, so the outcome says `executed: true, ok: true` and
budgets, cooldowns, fixes (flapping) and ladders advance as they would on a host where
every plan worked. Whether the fault then clears is up to the scenario.

The clock: events apply at their `t`; between them the replay runs a *cycle* at every
multiple of `agent.sample_interval_s` (1 s by default), as the daemon does: the held
metric values are sampled, then `decide()` runs and its decisions are executed at once.
A cycle at the same `t` as an event runs after the event. The format is in
docs/simulate.md.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.clock import FakeClock
from agent.config import Loaded, load_config, merge_tables
from agent.execute import Executor, RecordingRunner
from agent.model import (
    DeviceEvent,
    LogLine,
    MetricSample,
    Observation,
    ProbeResult,
    Step,
    StepResult,
)
from agent.pipeline.api import Event
from agent.pipeline.build import build_pipeline
from agent.pipeline.decide import DecisionPipeline
from agent.schema import ConfigInvalid
from agent.simulate.scenario import Scenario, ScenarioError, ScenarioEvent, read_scenario
from agent.sources.metrics import METRICS

#: a scenario may not ask for more cycles than this (a typo in `t` must not hang CI)
MAX_CYCLES = 2_000_000


def scenario_config(
    scenario: Scenario, config_file: str | None = None, mode: str | None = None
) -> Loaded:
    """The configuration a replay runs with: the file (or built-in defaults), then the
    scenario's host line (role, hostname, mode, config tables), then `mode`; loaded as
    every command loads it (agent/config.py load_config).

    ConfigInvalid (file, key, reason) when the result is not a valid configuration.
    """
    host = scenario.host
    agent: dict[str, Any] = {}
    if host.role:
        agent["role"] = host.role
    if host.hostname:
        agent["hostname"] = host.hostname
    if host.mode:
        agent["mode"] = host.mode
    if mode:
        agent["mode"] = mode
    overlay = merge_tables(host.config, {"agent": agent}) if agent else dict(host.config)
    loaded, errors = load_config(config_file, overlay=overlay,
                                 overlay_label=f"{scenario.file}:{host.line}")
    if loaded is None:
        raise ConfigInvalid(errors)
    return loaded


def known_metric(name: str, loaded: Loaded) -> bool:
    """A name `nodewarden sample` prints (families: disk.<dev>..., fs.<mountpoint>...) or
    one a threshold rule of this configuration watches (e.g. unit.*.cpu_pct)."""
    from agent.detect.rules import ThresholdRule

    for spec in METRICS:
        if re.fullmatch(re.sub(r"<[a-z]+>", ".+", re.escape(spec.name)), name):
            return True
    for rule in loaded.config.rules:
        if isinstance(rule, ThresholdRule):
            regex = "^" + re.escape(rule.metric).replace(r"\*", ".+") + "$"
            if re.match(regex, name):
                return True
    return False


def check_metrics(scenario: Scenario, loaded: Loaded) -> None:
    """ScenarioError for a metric name nothing samples or watches (a typo)."""
    for ev in scenario.events:
        if ev.kind != "metrics":
            continue
        for name in ev.data["metrics"]:
            if not known_metric(name, loaded):
                raise ScenarioError(scenario.file, ev.line, f"unknown metric {name!r}: not a "
                                    "name `nodewarden sample --json` prints nor one a "
                                    "threshold rule watches")


class SimulatedRunner:
    """`enforce` in a replay: records each step and reports that it ran and succeeded
    (exited with the first code the step counts as success, usually 0)."""

    executes = True

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def run(self, step: Step) -> StepResult:
        self.steps.append(step)
        code = step.ok_exit[0] if step.ok_exit else 0
        return StepResult(argv=step.argv, exit_code=code, duration_s=0.0, ran=True,
                          stdout="[simulated]")


def _observation(ev: ScenarioEvent, now: float) -> Observation | None:
    d = ev.data
    if ev.kind == "kmsg":
        return LogLine(source="kmsg", text=d["kmsg"], t=now, facility=d.get("facility", 0),
                       priority=d.get("priority", 6))
    if ev.kind == "log":
        return LogLine(source=f"log:{d['source']}", text=d["log"], t=now)
    if ev.kind == "probe":
        return ProbeResult(t=now, name=d["probe"], ok=d["ok"], latency_ms=d.get("latency_ms"),
                           detail=d.get("detail", ""))
    if ev.kind == "udev":
        return DeviceEvent(t=now, action=d["udev"], device=d["device"])
    return None  # metrics: held, sampled at each cycle


class Replay:
    """One replay's moving parts: the fake clock, the pipeline, the held metrics."""

    def __init__(self, scenario: Scenario, pipeline: DecisionPipeline, clock: FakeClock) -> None:
        self.scenario = scenario
        self.pipeline = pipeline
        self.clock = clock
        self.start = scenario.host.start
        self.timeline: list[Event] = []
        self.held: dict[str, float] = {}
        self.blocked: tuple[str, ...] = ()
        self.dry, self.simulated = RecordingRunner(), SimulatedRunner()

    def emit(self, events: Sequence[Event]) -> None:
        self.timeline.extend(dataclasses.replace(e, t=round(e.t - self.start, 3))
                             for e in events)

    def advance_to(self, t: float) -> None:
        self.clock.advance(max(0.0, self.start + t - self.clock.now()))

    def cycle(self) -> None:
        """What the daemon does each sample interval: sample, decide, execute."""
        now = self.clock.now()
        if self.held:
            self.emit(self.pipeline.observe(MetricSample(t=now, values=dict(self.held),
                                                         blocked_tasks=self.blocked)))
        events, decisions = self.pipeline.decide(now)
        self.emit(events)
        for decision in decisions:
            runner = self.simulated if decision.execute else self.dry
            outcome = Executor(runner, self.clock).run(decision.plan)
            if decision.execute:
                outcome = dataclasses.replace(outcome, detail="simulated (nothing ran): "
                                              + outcome.detail)
            self.emit(self.pipeline.complete(decision, outcome))

    def apply(self, ev: ScenarioEvent) -> None:
        """One scenario line at its time: metrics are held, the rest observed."""
        self.advance_to(ev.t)
        if ev.kind != "metrics":
            obs = _observation(ev, self.clock.now())
            assert obs is not None
            self.emit(self.pipeline.observe(obs))
            return
        for name, value in ev.data["metrics"].items():
            if value is None:
                self.held.pop(name, None)
            else:
                self.held[name] = float(value)
        if "blocked_tasks" in ev.data:
            self.blocked = tuple(ev.data["blocked_tasks"])

    def run(self, interval: float) -> list[Event]:
        k = 0  # the next cycle runs at k * interval
        for ev in self.scenario.events:
            while k * interval < ev.t:
                self.advance_to(k * interval)
                self.cycle()
                k += 1
            self.apply(ev)
        while k * interval <= self.scenario.end:
            self.advance_to(k * interval)
            self.cycle()
            k += 1
        return self.timeline


def replay(scenario: Scenario, loaded: Loaded) -> list[Event]:
    """Run the scenario; the timeline with `t` in seconds from the scenario's start."""
    check_metrics(scenario, loaded)
    interval = loaded.config.agent.sample_interval_s
    cycles = scenario.end / interval
    if cycles > MAX_CYCLES:
        raise ScenarioError(scenario.file, scenario.events[-1].line if scenario.events else 0,
                            f"the scenario lasts {scenario.end:g} s: {cycles:.0f} cycles of "
                            f"{interval:g} s is more than {MAX_CYCLES}; raise "
                            "agent.sample_interval_s in the host line's config")
    clock = FakeClock(scenario.host.start)
    with tempfile.TemporaryDirectory(prefix="nodewarden-simulate-") as tmp:
        config = loaded.config
        config = dataclasses.replace(
            config, agent=dataclasses.replace(config.agent, state_dir=Path(tmp)))
        pipeline = build_pipeline(config, clock, catalog=loaded.catalog,
                                  check_preconditions=False, write_status=False)
        return Replay(scenario, pipeline, clock).run(interval)


def simulate_file(
    path: Path, config_file: str | None = None, mode: str | None = None
) -> list[Event]:
    """read_scenario + scenario_config + replay (ScenarioError, ConfigInvalid)."""
    scenario = read_scenario(path)
    return replay(scenario, scenario_config(scenario, config_file, mode))
