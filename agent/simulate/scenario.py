"""Scenario files (JSON lines, docs/simulate.md): the host line and one observation per
line at `t` seconds from the start. A malformed line is a ScenarioError naming the file,
the line and the reason; nothing of a bad scenario is replayed."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.config import ROLES
from agent.schema import MODES

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


def _integer_in(obj: dict[str, Any], key: str, default: int, lo: int, hi: int) -> bool:
    value = obj.get(key, default)
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _kmsg_problem(value: Any, obj: dict[str, Any]) -> str | None:
    if not isinstance(value, str):
        return "kmsg must be the kernel line as a string"
    if not _integer_in(obj, "facility", 0, 0, 23):
        return "facility must be an integer 0..23 (0 = the kernel itself)"
    if not _integer_in(obj, "priority", 6, 0, 7):
        return "priority must be an integer 0..7"
    return None


def _log_problem(value: Any, obj: dict[str, Any]) -> str | None:
    if not isinstance(value, str):
        return "log must be the log line as a string"
    src = obj.get("source")
    if not isinstance(src, str) or not _NAME.match(src):
        return ("a log line needs \"source\": the log's name, e.g. \"mail\" (its signatures "
                "are those of source log:mail)")
    return None


def _metrics_problem(value: Any, obj: dict[str, Any]) -> str | None:
    if not isinstance(value, dict) or not value:
        return "metrics must be a non-empty object of NAME: number (null removes)"
    for name, v in value.items():
        if not _METRIC.match(name):
            return f"metric name {name!r} is not a metric name"
        if v is not None and not _number(v):
            return f"metric {name} must be a number or null, not {v!r}"
    tasks = obj.get("blocked_tasks", [])
    if not isinstance(tasks, list) or not all(isinstance(x, str) for x in tasks):
        return "blocked_tasks must be a list of task names"
    return None


def _probe_problem(value: Any, obj: dict[str, Any]) -> str | None:
    if not isinstance(value, str) or not _NAME.match(value):
        return "probe must be the probe's name, e.g. \"imap\""
    if not isinstance(obj.get("ok"), bool):
        return "a probe line needs \"ok\": true or false"
    lat = obj.get("latency_ms")
    if lat is not None and (not _number(lat) or lat < 0):
        return "latency_ms must be a number >= 0 or null"
    if not isinstance(obj.get("detail", ""), str):
        return "detail must be a string"
    return None


def _udev_problem(value: Any, obj: dict[str, Any]) -> str | None:
    if value not in ("add", "remove", "change"):
        return f"udev must be add, remove or change, not {value!r}"
    dev = obj.get("device")
    if not isinstance(dev, str) or not _NAME.match(dev):
        return "a udev line needs \"device\": the kernel name, e.g. \"sdb\""
    return None


#: what is wrong with an event of each kind (None: nothing)
_EVENT_CHECKS = {"kmsg": _kmsg_problem, "log": _log_problem, "metrics": _metrics_problem,
                 "probe": _probe_problem, "udev": _udev_problem}


def _check_event(kind: str, obj: dict[str, Any], file: str, n: int) -> None:
    problem = _EVENT_CHECKS[kind](obj[kind], obj)
    if problem is not None:
        raise ScenarioError(file, n, problem)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number (NaN and infinity are typos too)")


def _line_object(line: str, file: str, n: int) -> dict[str, Any]:
    try:
        obj = json.loads(line, parse_constant=_no_constant)
    except ValueError as exc:
        raise ScenarioError(file, n, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ScenarioError(file, n, "nested too deep: not a scenario line") from None
    if not isinstance(obj, dict):
        raise ScenarioError(file, n, "each line must be a JSON object")
    return obj


def _event(obj: dict[str, Any], last_t: float, file: str, n: int) -> ScenarioEvent:
    """One event line, checked: its time, its one kind, its keys and values."""
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
    return ScenarioEvent(t, n, kind, obj)


def parse_scenario(text: str, file: str = "<scenario>") -> Scenario:
    """Parse scenario text; ScenarioError names the first bad line and why."""
    host: Host | None = None
    events: list[ScenarioEvent] = []
    for n, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        obj = _line_object(line, file, n)
        if "host" not in obj:
            events.append(_event(obj, events[-1].t if events else 0.0, file, n))
            continue
        if len(obj) != 1:
            raise ScenarioError(file, n, "the host line holds only {\"host\": {...}}")
        if host is not None or events:
            raise ScenarioError(file, n, "the host line must be the first line")
        host = _host(obj["host"], file, n)
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
