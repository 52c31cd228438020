"""The daemon's view of what fires and what it read, and its one-line cycle sentence
(docs/architecture.md, convention 3).

Findings are tracked from the events the pipeline emits (any Pipeline, not only
agent/pipeline/decide.py's): a finding event makes its (problem, subject) fire, its
resolution ends it. The sentence is published as systemd STATUS= when it changes, and
logged when it changes from or to acting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.daemon.overview import Seen
from agent.daemon.watchdog import Notifier, status_message
from agent.pipeline.api import Decision, Event
from agent.report.text import printable

if TYPE_CHECKING:
    from agent.daemon.sources import Sources

log = logging.getLogger("nodewarden")

#: (problem, subject) -> trusted
Firing = dict[tuple[str, str], bool]


class CycleStatus:
    """What fires now, what was read, the last load1, and the sentence systemd shows."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.firing: Firing = {}
        #: (problem, subject) -> the severity its finding said, for what fires
        self.severity: dict[tuple[str, str], str] = {}
        self.load1: float | None = None
        self.kernel_records = 0
        self.log_lines = 0
        self.probe_ok: dict[str, bool] = {}
        self.actions: list[str] = []  # what this cycle handed to the execution worker
        self._last = ""

    def seen(self, sources: Sources, mode: str) -> Seen:
        """What the agent sees now, for the overview line."""
        # trusted findings first: evidence from the kernel or a log outranks a forged line
        firing = tuple(sorted(((p, s, t) for (p, s), t in self.firing.items()),
                              key=lambda f: (not f[2], f[0], f[1])))
        probes = tuple(p.name for p in sources.probe_settings)
        return Seen(
            firing=firing, kernel_records=self.kernel_records, log_lines=self.log_lines,
            logs=len(sources.logs), problems=tuple(sources.problems()),
            probes_failing=tuple(n for n in probes if self.probe_ok.get(n) is False),
            probes=len(probes), load1=self.load1, mode=mode)

    def acting(self, decision: Decision) -> None:
        """This cycle hands `decision` to the execution worker (the sentence says so)."""
        mode = "execute" if decision.execute else "dry-run"
        self.actions.append(f"{decision.plan.action} {decision.plan.subject} ({mode})")

    def track(self, event: Event) -> None:
        f = event.fields
        key = (str(f.get("problem", "")), str(f.get("subject", "")))
        if event.kind == "finding" and f.get("state", "firing") != "resolved":
            self.firing[key] = bool(f.get("trusted", True))
            self.severity[key] = str(f.get("severity", ""))
        elif event.kind in ("finding", "resolved"):
            self.firing.pop(key, None)
            self.severity.pop(key, None)

    def clear(self) -> None:
        """Nothing fires (a reload whose rules changed starts over)."""
        self.firing.clear()
        self.severity.clear()

    def summary(self, pipeline_sentence: Callable[[], str] | None) -> str:
        """The cycle's sentence: the pipeline's own (agent/pipeline/decide.py) plus load1."""
        load = "n/a" if self.load1 is None else f"{self.load1:.1f}"
        if pipeline_sentence is not None:
            return f"{pipeline_sentence()}; load1 {load}"
        n = len(self.firing)
        firing = f"{n} finding{'' if n == 1 else 's'} firing"
        if self.actions:
            return f"acting: {', '.join(self.actions)}; {firing}; load1 {load}"
        return f"no action: {firing}; load1 {load}"

    def publish(self, text: str, *, ready: bool) -> None:
        """STATUS= when the sentence changed; a log line when it is or was acting."""
        self.actions.clear()
        if text != self._last and ready:
            self.notifier.notify(status_message(text))
            if not text.startswith("no action") or not self._last.startswith("no action"):
                log.info("%s", printable(text))  # subjects and reasons are others' text
        self._last = text
