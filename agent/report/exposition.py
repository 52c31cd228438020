"""The Prometheus text exposition format, version 0.0.4, written by hand.

What node_exporter's textfile collector reads (docs/deploy.md "Metrics"): for each
family a `# HELP` and a `# TYPE` line, then its samples, one a line:

    # HELP nodewarden_actions_total Outcomes of remediation plans handed to an executor.
    # TYPE nodewarden_actions_total counter
    nodewarden_actions_total{action="page",outcome="dry-run"} 2

Label values are escaped as the format says (backslash, double quote, newline), and so is
help text (backslash, newline). No sample carries a timestamp: the textfile collector
refuses them. prometheus-client is not imported here (the agent's memory budget); the
tests parse this output with its parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: the metric and label names the format allows (label names starting `__` are reserved)
NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "untyped")


@dataclass(frozen=True)
class Sample:
    """One line: the family's name (or `name + suffix`), labels in order, a value."""

    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    """A metric family: its name, type, help text and samples."""

    name: str
    type: str
    help: str
    samples: tuple[Sample, ...] = ()

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(f"not a metric name: {self.name!r}")
        if self.type not in TYPES:
            raise ValueError(f"not a metric type: {self.type!r}")
        for sample in self.samples:
            for label, _ in sample.labels:
                if not LABEL_RE.fullmatch(label) or label.startswith("__"):
                    raise ValueError(f"not a label name: {label!r}")


def escape_label_value(text: str) -> str:
    """`\\` → `\\\\`, `"` → `\\"`, a newline → `\\n` (the format's three escapes)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """`\\` → `\\\\`, a newline → `\\n` (help text escapes no quotes)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """An integer-valued number without a fraction; NaN and the infinities as the format
    spells them; any other float as Python's shortest round-trip repr."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)
    return "{" + inner + "}"


def render(families: Iterable[Family]) -> str:
    """The exposition text of `families`, in the order given, ending with a newline."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        lines += [f"{family.name}{_labels(s.labels)} {format_value(s.value)}"
                  for s in family.samples]
    return "\n".join(lines) + "\n"
