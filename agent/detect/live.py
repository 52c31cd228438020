"""What the detectors keep per rule while they decide (agent/detect/findings.py): a
finding under construction, and each rule kind's pending state. Mutable on purpose (one
per rule and subject, updated per observation); what leaves is a frozen Finding."""

from __future__ import annotations

import fnmatch
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.model import Finding, LogLine, MetricSample, Severity

EVIDENCE_LIMIT = 5


def trusted_line(line: LogLine) -> bool:
    """May this line contribute to an action? Kernel-printed kmsg or a followed log file."""
    return line.from_kernel or line.source.startswith("log:")


def globs(patterns: Iterable[str], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass
class Live:
    """A firing (or pending) finding under construction."""

    rule: str
    problem: str
    subject: str
    severity: Severity
    first_seen: float
    last_seen: float
    trusted: bool = True
    count: int = 0
    evidence: deque[str] = field(default_factory=lambda: deque(maxlen=EVIDENCE_LIMIT))
    _snap: tuple[tuple[object, ...], Finding] | None = field(default=None, repr=False,
                                                            compare=False)

    def snapshot(self, state: str = "firing") -> Finding:
        """The finding as a frozen value; rebuilt only when the live state changed
        (decide() asks for every firing finding every cycle)."""
        key = (state, self.count, self.last_seen, self.trusted, self.severity,
               len(self.evidence), self.evidence[-1] if self.evidence else None)
        if self._snap is not None and self._snap[0] == key:
            return self._snap[1]
        finding = self._build(state)
        self._snap = (key, finding)
        return finding

    def _build(self, state: str) -> Finding:
        return Finding(
            problem=self.problem, subject=self.subject, state=state,  # type: ignore[arg-type]
            first_seen=self.first_seen, last_seen=self.last_seen, count=self.count,
            evidence=tuple(self.evidence), rule=self.rule, severity=self.severity,
            trusted=self.trusted,
        )


@dataclass
class ThresholdState:
    pending_since: float | None = None
    clear_since: float | None = None
    live: Live | None = None


@dataclass
class SignatureWindow:
    times: deque[float] = field(default_factory=deque)
    live: Live | None = None
    last_match: float = 0.0


@dataclass
class ProbeState:
    failures: int = 0
    good: int = 0
    slow_since: float | None = None
    live: Live | None = None


def metric_pattern(metric: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(metric).replace(r"\*", "(.+?)") + "$")


def match_values(metric: str, m: re.Match[str] | None) -> dict[str, str]:
    """{match} (first `*` to last) and {match1}.. (each `*`) of a wildcard metric."""
    if m is None or not m.lastindex:
        return {"match": ""}
    out = {f"match{i}": m.group(i) for i in range(1, m.lastindex + 1)}
    out["match"] = metric[m.start(1) : m.end(m.lastindex)]
    return out


def first_task(sample: MetricSample, name: str) -> str:
    tasks = getattr(sample, name, ())
    if isinstance(tasks, Mapping):
        return str(max(tasks, key=lambda k: tasks[k])) if tasks else "unknown"
    if isinstance(tasks, Sequence) and not isinstance(tasks, str) and tasks:
        return str(tasks[0])
    return "unknown"
