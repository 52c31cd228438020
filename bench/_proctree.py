"""A process and all its descendants, as the benches count them: CPU of every thread of
every process (ns, from /proc/PID/task/*/schedstat) and RSS of each (VmRSS)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def tree(pid: int) -> list[int]:
    """`pid` and its descendants alive now (children's children too)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(data[data.rfind(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out = [pid]
    for p in out:
        out += children.get(p, [])
    return out


def cpu_ns(pids: list[int]) -> int:
    """Time on CPU of every thread of `pids` (ns), finer than the 10 ms ticks of stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text()
                                 .split()[0])
    return total


def rss(pid: int) -> tuple[str, float]:
    """(comm, VmRSS in MiB) of one process."""
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return comm, int(line.split()[1]) / 1024
    return comm, 0.0


def rss_tree(pid: int) -> list[tuple[int, str, float]]:
    """(pid, comm, RSS MiB) of `pid` and each descendant."""
    out = []
    for p in tree(pid):
        with contextlib.suppress(OSError):
            comm, mib = rss(p)
            out.append((p, comm, mib))
    return out
