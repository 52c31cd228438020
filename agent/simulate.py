"""Incident replays: a scenario (JSON lines) through the real detectors, policy and guards.

    scenario = read_scenario(path)                       # ScenarioError(line, reason)
    config = scenario_config(scenario, config_file, mode)  # ConfigInvalid
    timeline = replay(scenario, config)                  # list[Event], t from the start

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
import json
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.clock import FakeClock
from agent.config import ROLES, Config, config_path, parse_config
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
from agent.report.text import printable
from agent.schema import MODES, ConfigError, ConfigInvalid, parse_toml
from agent.sources.metrics import METRICS

#: where the simulated clock starts unless the host line says `start` (fixed: reproducible)
DEFAULT_START = 1_790_000_000.0  # 2026-09-21T14:13:20Z
OBS_KEYS = ("kmsg", "log", "metrics", "probe", "udev")
EXTRA_KEYS: Mapping[str, frozenset[str]] = {
    "kmsg": frozenset({"facility", "priority"}),
    "log": frozenset({"source"}),
    "metrics": frozenset({"blocked_tasks"}),
    "probe": frozenset({"ok", "latency_ms", "detail"}),
    "udev": frozenset({"device"}),
}
HOST_KEYS = frozenset({"role", "hostname", "mode", "start", "until", "config"})
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_METRIC = re.compile(r"^[A-Za-z0-9_.:@/\-]{1,200}$")
#: a scenario may not ask for more cycles than this (a typo in `t` must not hang CI)
MAX_CYCLES = 2_000_000


class ScenarioError(Exception):
    """A scenario line that cannot be replayed: where and why."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        self.file, self.line, self.reason = file, line, reason
        super().__init__(f"{file}:{line}: {reason}")


@dataclasses.dataclass(frozen=True)
class Host:
    role: str | None = None
    hostname: str | None = None
    mode: str | None = None
    start: float = DEFAULT_START
    until: float | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    line: int = 0


@dataclasses.dataclass(frozen=True)
class ScenarioEvent:
    """One scenario line: at `t` (seconds from the start), one observation to apply."""

    t: float
    line: int
    kind: str
    data: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Scenario:
    file: str
    host: Host
    events: tuple[ScenarioEvent, ...]

    @property
    def end(self) -> float:
        last = self.events[-1].t if self.events else 0.0
        return max(last, self.host.until or 0.0)


# --------------------------------------------------------------------------- reading
def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _host(raw: Any, file: str, n: int) -> Host:
    def bad(reason: str) -> ScenarioError:
        return ScenarioError(file, n, f"host: {reason}")

    if not isinstance(raw, dict):
        raise bad("must be an object such as {\"role\": \"storage\"}")
    unknown = sorted(set(raw) - HOST_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(HOST_KEYS))}")
    role, mode, hostname = raw.get("role"), raw.get("mode"), raw.get("hostname")
    if role is not None and role not in ROLES:
        raise bad(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if mode is not None and mode not in MODES:
        raise bad(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if hostname is not None and (not isinstance(hostname, str) or not hostname):
        raise bad("hostname must be a non-empty string")
    start = DEFAULT_START
    if "start" in raw:
        try:
            parsed = datetime.fromisoformat(str(raw["start"]).replace("Z", "+00:00"))
        except ValueError:
            raise bad(f"start {raw['start']!r} is not an ISO time like "
                      "2021-10-20T03:18:00Z") from None
        if parsed.tzinfo is None:
            raise bad("start needs a time zone (end it with Z for UTC)")
        start = parsed.timestamp()
    until = raw.get("until")
    if until is not None and (not _number(until) or until < 0):
        raise bad("until must be a number of seconds from the start")
    config = raw.get("config", {})
    if not isinstance(config, dict):
        raise bad("config must be an object with the tables of agent.toml")
    return Host(role, hostname, mode, start, float(until) if until is not None else None,
                config, n)


def _check_event(kind: str, obj: dict[str, Any], file: str, n: int) -> None:
    def bad(reason: str) -> ScenarioError:
        return ScenarioError(file, n, reason)

    value = obj[kind]
    if kind == "kmsg":
        if not isinstance(value, str):
            raise bad("kmsg must be the kernel line as a string")
        fac = obj.get("facility", 0)
        if not isinstance(fac, int) or isinstance(fac, bool) or not 0 <= fac <= 23:
            raise bad("facility must be an integer 0..23 (0 = the kernel itself)")
        pri = obj.get("priority", 6)
        if not isinstance(pri, int) or isinstance(pri, bool) or not 0 <= pri <= 7:
            raise bad("priority must be an integer 0..7")
    elif kind == "log":
        if not isinstance(value, str):
            raise bad("log must be the log line as a string")
        src = obj.get("source")
        if not isinstance(src, str) or not _NAME.match(src):
            raise bad("a log line needs \"source\": the log's name, e.g. \"mail\" "
                      "(its signatures are those of source log:mail)")
    elif kind == "metrics":
        if not isinstance(value, dict) or not value:
            raise bad("metrics must be a non-empty object of NAME: number (null removes)")
        for name, v in value.items():
            if not _METRIC.match(name):
                raise bad(f"metric name {name!r} is not a metric name")
            if v is not None and not _number(v):
                raise bad(f"metric {name} must be a number or null, not {v!r}")
        tasks = obj.get("blocked_tasks", [])
        if not isinstance(tasks, list) or not all(isinstance(x, str) for x in tasks):
            raise bad("blocked_tasks must be a list of task names")
    elif kind == "probe":
        if not isinstance(value, str) or not _NAME.match(value):
            raise bad("probe must be the probe's name, e.g. \"imap\"")
        if not isinstance(obj.get("ok"), bool):
            raise bad("a probe line needs \"ok\": true or false")
        lat = obj.get("latency_ms")
        if lat is not None and (not _number(lat) or lat < 0):
            raise bad("latency_ms must be a number >= 0 or null")
        if not isinstance(obj.get("detail", ""), str):
            raise bad("detail must be a string")
    elif kind == "udev":
        if value not in ("add", "remove", "change"):
            raise bad(f"udev must be add, remove or change, not {value!r}")
        dev = obj.get("device")
        if not isinstance(dev, str) or not _NAME.match(dev):
            raise bad("a udev line needs \"device\": the kernel name, e.g. \"sdb\"")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number (NaN and infinity are typos too)")


def parse_scenario(text: str, file: str = "<scenario>") -> Scenario:
    """Parse scenario text; ScenarioError names the first bad line and why."""
    host: Host | None = None
    events: list[ScenarioEvent] = []
    last_t = 0.0
    for n, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line, parse_constant=_no_constant)
        except ValueError as exc:
            raise ScenarioError(file, n, f"not valid JSON: {exc}") from None
        except RecursionError:
            raise ScenarioError(file, n, "nested too deep: not a scenario line") from None
        if not isinstance(obj, dict):
            raise ScenarioError(file, n, "each line must be a JSON object")
        if "host" in obj:
            if len(obj) != 1:
                raise ScenarioError(file, n, "the host line holds only {\"host\": {...}}")
            if host is not None or events:
                raise ScenarioError(file, n, "the host line must be the first line")
            host = _host(obj["host"], file, n)
            continue
        raw_t: Any = obj.get("t")
        if not _number(raw_t) or raw_t < 0:
            raise ScenarioError(file, n, "every event needs \"t\": seconds from the start "
                                         "(a number >= 0)")
        t = float(raw_t)
        if t < last_t:
            raise ScenarioError(file, n, f"t {t:g} goes back in time (previous line: "
                                         f"{last_t:g}); lines must be in time order")
        kinds = [k for k in OBS_KEYS if k in obj]
        if len(kinds) != 1:
            raise ScenarioError(file, n, "each event needs exactly one of "
                                + ", ".join(OBS_KEYS) + (f" (found {', '.join(kinds)})"
                                                          if kinds else ""))
        kind = kinds[0]
        unknown = sorted(set(obj) - {"t", kind} - EXTRA_KEYS[kind])
        if unknown:
            raise ScenarioError(file, n, f"unknown key(s) for a {kind} event: "
                                         f"{', '.join(unknown)}")
        _check_event(kind, obj, file, n)
        last_t = t
        events.append(ScenarioEvent(t, n, kind, obj))
    return Scenario(file, host or Host(), tuple(events))


def read_scenario(path: Path) -> Scenario:
    """ScenarioError for unreadable or malformed files (line 0 = the file itself)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(str(path), 0, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(str(path), 0, f"not UTF-8 text: {exc}") from None
    return parse_scenario(text, str(path))


# --------------------------------------------------------------------------- configuration
def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def scenario_config(
    scenario: Scenario, config_file: str | None = None, mode: str | None = None
) -> Config:
    """The configuration a replay runs with: the file (or built-in defaults), then the
    scenario's host line (role, hostname, mode, config tables), then `mode`.

    ConfigInvalid (file, key, reason) when the result is not a valid configuration.
    """
    path, required = config_path(config_file)
    raw: dict[str, Any] = {}
    name = "<built-in defaults>"
    if path.exists():
        name = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigInvalid([ConfigError(str(path), "-", f"cannot use: {exc}")]) from None
        parsed, errors = parse_toml(data, str(path))
        if parsed is None:
            raise ConfigInvalid(errors)
        raw = parsed
    elif required:
        raise ConfigInvalid([ConfigError(str(path), "-", "file not found")])
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
    merged = _merge(_merge(raw, host.config), {"agent": agent} if agent else {})
    label = name if not (host.config or agent) else f"{name} + {scenario.file}:{host.line}"
    config, errors = parse_config(merged, label)
    if errors:
        raise ConfigInvalid(errors)
    return config


def known_metric(name: str, config: Config) -> bool:
    """A name `nodewarden sample` prints (families: disk.<dev>..., fs.<mountpoint>...) or
    one a threshold rule of this configuration watches (e.g. unit.*.cpu_pct)."""
    from agent.detect.rules import ThresholdRule

    for spec in METRICS:
        if re.fullmatch(re.sub(r"<[a-z]+>", ".+", re.escape(spec.name)), name):
            return True
    for rule in config.rules:
        if isinstance(rule, ThresholdRule):
            regex = "^" + re.escape(rule.metric).replace(r"\*", ".+") + "$"
            if re.match(regex, name):
                return True
    return False


def check_metrics(scenario: Scenario, config: Config) -> None:
    """ScenarioError for a metric name nothing samples or watches (a typo)."""
    for ev in scenario.events:
        if ev.kind != "metrics":
            continue
        for name in ev.data["metrics"]:
            if not known_metric(name, config):
                raise ScenarioError(scenario.file, ev.line, f"unknown metric {name!r}: not a "
                                    "name `nodewarden sample --json` prints nor one a "
                                    "threshold rule watches")


# --------------------------------------------------------------------------- replay
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


def replay(scenario: Scenario, config: Config) -> list[Event]:
    """Run the scenario; the timeline with `t` in seconds from the scenario's start."""
    check_metrics(scenario, config)
    interval = config.agent.sample_interval_s
    cycles = scenario.end / interval
    if cycles > MAX_CYCLES:
        raise ScenarioError(scenario.file, scenario.events[-1].line if scenario.events else 0,
                            f"the scenario lasts {scenario.end:g} s: {cycles:.0f} cycles of "
                            f"{interval:g} s is more than {MAX_CYCLES}; raise "
                            "agent.sample_interval_s in the host line's config")
    start = scenario.host.start
    clock = FakeClock(start)
    timeline: list[Event] = []
    held: dict[str, float] = {}
    blocked: tuple[str, ...] = ()
    with tempfile.TemporaryDirectory(prefix="nodewarden-simulate-") as tmp:
        state_dir = Path(tmp)
        config = dataclasses.replace(
            config, agent=dataclasses.replace(config.agent, state_dir=state_dir))
        pipeline = build_pipeline(config, clock, check_preconditions=False,
                                  write_status=False)
        dry, simulated = RecordingRunner(), SimulatedRunner()

        def emit(events: Sequence[Event]) -> None:
            timeline.extend(dataclasses.replace(e, t=round(e.t - start, 3)) for e in events)

        def cycle() -> None:
            now = clock.now()
            if held:
                emit(pipeline.observe(MetricSample(t=now, values=dict(held),
                                                   blocked_tasks=blocked)))
            events, decisions = pipeline.decide(now)
            emit(events)
            for decision in decisions:
                runner = simulated if decision.execute else dry
                outcome = Executor(runner, clock).run(decision.plan)
                if decision.execute:
                    outcome = dataclasses.replace(outcome, detail="simulated (nothing ran): "
                                                  + outcome.detail)
                emit(pipeline.complete(decision, outcome))

        def advance_to(t: float) -> None:
            clock.advance(max(0.0, start + t - clock.now()))

        k = 0  # the next cycle runs at k * interval
        for ev in scenario.events:
            while k * interval < ev.t:
                advance_to(k * interval)
                cycle()
                k += 1
            advance_to(ev.t)
            if ev.kind == "metrics":
                for name, value in ev.data["metrics"].items():
                    if value is None:
                        held.pop(name, None)
                    else:
                        held[name] = float(value)
                if "blocked_tasks" in ev.data:
                    blocked = tuple(ev.data["blocked_tasks"])
            else:
                obs = _observation(ev, clock.now())
                assert obs is not None
                emit(pipeline.observe(obs))
        while k * interval <= scenario.end:
            advance_to(k * interval)
            cycle()
            k += 1
    return timeline


def simulate_file(
    path: Path, config_file: str | None = None, mode: str | None = None
) -> list[Event]:
    """read_scenario + scenario_config + replay (ScenarioError, ConfigInvalid)."""
    scenario = read_scenario(path)
    return replay(scenario, scenario_config(scenario, config_file, mode))


# --------------------------------------------------------------------------- output
def clock_text(t: float) -> str:
    s = int(t)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render(event: Event) -> str:
    """One human line of the timeline (control characters shown as \\xNN)."""
    return printable(_render(event))


def _render(event: Event) -> str:
    f = event.fields
    head = f"{clock_text(event.t):>9}  {event.kind:<8}"
    if event.kind in ("finding", "resolved"):
        trust = "" if f.get("trusted", True) else "  UNTRUSTED (written from userspace)"
        ev = f.get("evidence") or []
        last = f"  [{str(ev[-1])[:120]}]" if ev else ""
        return f"{head} {f['problem']} {f['subject']} ({f.get('severity')}){trust}{last}"
    if event.kind == "verdict":
        word = "allow" if f.get("allow") else "DENY "
        return f"{head} {word} {f['action']} {f['subject']}: {f['reason']}"
    if event.kind == "plan":
        mode = "execute" if f.get("execute") else "dry-run"
        steps = "; ".join(" ".join(s) for s in f.get("steps", []))
        return f"{head} {f['action']} {f['subject']} ({mode}): {f.get('summary')}  $ {steps}"
    if event.kind == "outcome":
        ok = "ok" if f.get("ok") else "FAILED"
        return f"{head} {f['action']} {f['subject']}: {ok}: {f.get('detail')}"
    return f"{head} {f.get('text', '')}"


def to_json_line(event: Event) -> str:
    return json.dumps(event.to_json(), ensure_ascii=False, default=str)

