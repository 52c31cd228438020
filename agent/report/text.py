"""Text that others wrote, made safe to print on an operator's terminal or in a log.

A process name, a file name in a kernel record or a user name can hold terminal escapes
(`\\x1b[2K` erases the line an operator is reading) and newlines (a forged log line).
They may label a finding; printed, every control character shows as `\\xNN`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.pipeline.api import Event

#: every C0 control, DEL and the C1 controls, but the tab, as a visible escape
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160)) if c != 9}


def printable(text: str) -> str:
    """`text` with its control characters shown as `\\xNN` (tabs kept)."""
    return text.translate(_CONTROL)


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
