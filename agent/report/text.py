"""Text that others wrote, made safe to print on an operator's terminal or in a log.

A process name, a file name in a kernel record or a user name can hold terminal escapes
(`\\x1b[2K` erases the line an operator is reading) and newlines (a forged log line).
They may label a finding; printed, every control character shows as `\\xNN`.
"""

from __future__ import annotations

#: every C0 control, DEL and the C1 controls, but the tab, as a visible escape
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160)) if c != 9}


def printable(text: str) -> str:
    """`text` with its control characters shown as `\\xNN` (tabs kept)."""
    return text.translate(_CONTROL)
