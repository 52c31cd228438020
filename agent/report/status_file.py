"""The last cycle as `nodewarden status` (another process) reads it: `cycle.json` in the
state directory, with the cycle's sentence and the firing findings.

Written when the findings change, else at most every STATUS_EVERY_S; not fsync'd (it is a
view, rebuilt every cycle, not safety state: the audit log has the truth).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from agent.model import Finding

#: `nodewarden status` reads the last cycle here (in the state directory)
CYCLE_FILE = "cycle.json"
#: the status file is rewritten at most this often while the findings stay the same
STATUS_EVERY_S = 5.0


class StatusFile:
    """Writes the cycle view to `path` (atomically: a temporary file renamed over it)."""

    def __init__(self, path: Path, *, mode: str, role: str, host: str) -> None:
        self.path = path
        self.header = {"mode": mode, "role": role, "host": host}
        self._written: tuple[float, list[tuple[str, str, bool]]] | None = None

    def write(self, now: float, sentence: str, firing: Sequence[Finding]) -> None:
        keys = [(f.problem, f.subject, f.trusted) for f in firing]
        last = self._written
        if last is not None and last[1] == keys and now - last[0] < STATUS_EVERY_S:
            return
        findings = [{
            "problem": f.problem, "subject": f.subject, "severity": f.severity,
            "trusted": f.trusted, "first_seen": f.first_seen, "count": f.count,
            "rule": f.rule, "evidence": list(f.evidence[-1:]),
        } for f in firing]
        body = {"t": now, "sentence": sentence, **self.header, "findings": findings}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(body, default=str) + "\n", encoding="utf-8")
            tmp.replace(self.path)
        except OSError:
            return  # status is a convenience; the audit log has the truth
        self._written = (now, keys)
