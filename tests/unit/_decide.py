"""Small builders for the detect/policy/guards tests (values, not mocks)."""

from __future__ import annotations

from typing import Any

from agent.config import Config, parse_config
from agent.model import Finding, LogLine, MetricSample, Proposal, SignatureMatch
from agent.schema import ConfigError

T0 = 1_790_000_000.0  # a fixed wall-clock origin for tests


def kline(text: str, t: float, facility: int | None = 0) -> LogLine:
    return LogLine(source="kmsg", text=text, t=t, facility=facility)


def match(problem: str, subject: str, t: float, *, facility: int | None = 0,
          source: str = "kmsg", recovery: bool = False, signature: str = "") -> SignatureMatch:
    line = (kline(f"{problem} {subject}", t, facility) if source == "kmsg"
            else LogLine(source=source, text=f"{problem} {subject}", t=t))
    return SignatureMatch(signature or f"{problem}.x", problem, subject, "error", line,
                          recovery=recovery)


def sample(t: float, blocked: tuple[str, ...] = (), **values: float) -> MetricSample:
    return MetricSample(t=t, values=values, blocked_tasks=blocked)


def metrics(t: float, values: dict[str, float]) -> MetricSample:
    return MetricSample(t=t, values=values)


def finding(problem: str, subject: str, t: float = T0, *, trusted: bool = True,
            state: str = "firing") -> Finding:
    return Finding(problem, subject, state, t, t, 1, (), trusted=trusted)  # type: ignore[arg-type]


def proposal(action: str = "restart-service", subject: str = "nfs-server.service",
             **kw: Any) -> Proposal:
    kw.setdefault("problem", "storage-hang")
    kw.setdefault("finding_subject", "nfsd")
    return Proposal(action=action, subject=subject, **kw)


def config(raw: dict[str, Any], file: str = "/etc/nodewarden/agent.toml",
           ) -> tuple[Config, list[ConfigError]]:
    return parse_config(raw, file)
