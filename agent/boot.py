"""Which boot this is: the kernel's random boot id, new at every boot. A node restart's
intent record and the kernel-log position both say which boot they belong to."""

from __future__ import annotations

from pathlib import Path

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    return path.read_text(encoding="ascii").strip()
