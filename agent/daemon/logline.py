"""The daemon's log line for each event of the timeline: what happened and why, in one
line an operator can read (and grep) without opening the timeline file."""

from __future__ import annotations

from agent.pipeline.api import Event
from agent.report.text import printable


def describe(event: Event) -> str:
    """One log line that says what happened and why, printable (control characters in
    the text of others, a process or user name, show as \\xNN)."""
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
