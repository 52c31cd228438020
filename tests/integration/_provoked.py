"""Kernel lines our tests provoke on purpose, recorded so the dmesg check can excuse them.

A real-part test that makes the kernel print a genuine trouble line (a SYN flood against
a listener in a test namespace) records the line's exact text here first. The record
lives in /run, which lives exactly as long as the kernel ring does (one boot), so
`test_scan_dmesg.py` can tell "our test flooded a namespace" from "this machine is sick".
"""

from __future__ import annotations

from pathlib import Path

RECORD = Path("/run/nodewarden-tests/provoked-kernel-lines.txt")


def record(*texts: str) -> None:
    """Note kernel message texts (without the dmesg prefix) a test is about to provoke."""
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with RECORD.open("a", encoding="utf-8") as f:
        for text in texts:
            assert "\n" not in text
            f.write(text + "\n")


def provoked() -> set[str]:
    """Every text recorded during this boot."""
    try:
        return set(RECORD.read_text(encoding="utf-8").splitlines())
    except FileNotFoundError:
        return set()
