"""The sampler's /proc readers against their psutil equivalents, side by side (issue 8).

    python bench/psutil_vs_proc.py [--rounds 30]

Each round sleeps, then times (thread CPU) every reader of ours and its psutil
equivalent back to back, alternating which goes first, so both see the same cache state
and the same speed of the machine (which drifts 2x within a minute here). Medians per
reader, the per-sample totals and their ratio are printed. bench/sample.py imports
`compare()` to print the same figures next to the sampler's own cost.

What psutil has no equivalent for is read from /proc either way and left out of the
ratio: procs_running/procs_blocked (in /proc/stat only), pressure stall information,
the TcpExt counters, the half-open connection tables, the cgroup tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.sources import procfs
from agent.sources.cgroups import read_command, read_proc_ticks

Reader = Callable[[], object]


@dataclass(frozen=True)
class Pair:
    name: str
    ours: Reader
    theirs: Reader
    per_sample: bool  # read every sample (True) or on a slower cadence (False)


def pairs() -> list[Pair]:
    files = procfs.ProcFiles(keep_open=True)
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()][:20]

    def top_ours() -> None:
        for pid in pids:
            got = read_proc_ticks("/proc", pid)
            if got is not None:
                read_command("/proc", pid, got[1])

    def top_theirs() -> None:
        for pid in pids:
            try:
                p = psutil.Process(pid)
                p.cpu_times()
                p.name()
                p.cmdline()
            except psutil.Error:
                continue

    def dstate_theirs() -> list[str]:
        return [p.info["name"] for p in psutil.process_iter(["name", "status"])
                if p.info["status"] == psutil.STATUS_DISK_SLEEP]

    return [
        Pair("loadavg", lambda: procfs.parse_loadavg(files.read("/proc/loadavg")),
             psutil.getloadavg, True),
        Pair("stat: CPU times, CPUs", lambda: procfs.parse_stat(files.read("/proc/stat")),
             lambda: (psutil.cpu_times(), psutil.cpu_count()), True),
        Pair("meminfo: available, swap",
             lambda: procfs.parse_meminfo(files.read("/proc/meminfo")),
             lambda: (psutil.virtual_memory(), psutil.swap_memory()), True),
        Pair("diskstats", lambda: procfs.parse_diskstats(files.read("/proc/diskstats")),
             lambda: psutil.disk_io_counters(perdisk=True), True),
        Pair("D-state task scan", lambda: procfs.scan_dstate("/proc"), dstate_theirs, False),
        Pair(f"top process of a unit ({len(pids)} pids)", top_ours, top_theirs, False),
        Pair("filesystem use", lambda: os.statvfs("/"), lambda: psutil.disk_usage("/"),
             False),
    ]


def compare(rounds: int, pause_s: float = 0.25) -> list[tuple[str, float, float, bool]]:
    """(reader, our median µs, psutil median µs, read every sample)."""
    todo = pairs()
    ours: dict[str, list[float]] = {p.name: [] for p in todo}
    theirs: dict[str, list[float]] = {p.name: [] for p in todo}
    for p in todo:  # warm-up: first calls build psutil's caches
        p.ours()
        p.theirs()
    for i in range(rounds):
        time.sleep(pause_s)
        # rotate: the first reader after the pause pays for cold caches, each in turn
        for p in todo[i % len(todo):] + todo[:i % len(todo)]:
            order = [(p.ours, ours), (p.theirs, theirs)]
            for fn, into in order if i % 2 == 0 else order[::-1]:
                t0 = time.thread_time()
                fn()
                into[p.name].append((time.thread_time() - t0) * 1e6)
    return [(p.name, statistics.median(ours[p.name]), statistics.median(theirs[p.name]),
             p.per_sample) for p in todo]


def report(rows: list[tuple[str, float, float, bool]]) -> None:
    print(f"{'reader':<34} {'/proc (ours)':>13} {'psutil':>10} {'ratio':>7}")
    for name, a, b, every in rows:
        print(f"{name + ('' if every else ' *'):<34} {a:10.1f} µs {b:7.1f} µs {b / a:6.1f}x")
    a = sum(r[1] for r in rows if r[3])
    b = sum(r[2] for r in rows if r[3])
    # psutil has no procs_running/procs_blocked: /proc/stat is read for them anyway
    stat = next(r[1] for r in rows if r[0].startswith("stat"))
    print(f"{'per sample (rows without *)':<34} {a:10.1f} µs {b:7.1f} µs {b / a:6.1f}x   "
          f"(+ {stat:.0f} µs psutil would still need: /proc/stat for procs_blocked)")
    print("* on a slower cadence: D-state scan every 5 s (30 s when quiet), top process "
          "only for a unit >= 50 % of a core, filesystem use every 10 s")


def psutil_import_mib() -> float:
    """RSS an interpreter gains by importing psutil (what the daemon would pay)."""
    import subprocess

    code = ("def rss():\n for l in open('/proc/self/status'):\n"
            "  if l.startswith('VmRSS'): return int(l.split()[1])\n"
            "a = rss()\nimport psutil\nprint((rss() - a) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    report(compare(ap.parse_args().rounds))
    print(f"importing psutil costs {psutil_import_mib():.1f} MiB of RSS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
