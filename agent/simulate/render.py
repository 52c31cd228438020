"""The replay's timeline for people (one line per event) and for programs (JSON lines)."""

from __future__ import annotations

import json

from agent.pipeline.api import Event
from agent.report.text import printable


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
