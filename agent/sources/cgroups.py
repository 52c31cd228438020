"""CPU used by each systemd unit, from the cgroup tree systemd keeps (`unit.<unit>.cpu_pct`).

A runaway unit (incident 003: a provisioning script; 002: a spam filter in a loop) shows
as one cgroup eating CPU. systemd puts every unit in its own cgroup, and the kernel counts
the CPU time of each cgroup, so one small read per unit gives the figure:

* cgroup v2 (unified): `<unit>/cpu.stat`, line `usage_usec`. The kernel keeps this line
  on every v2 cgroup whether or not the cpu controller is enabled (measured on hybrid
  hosts whose unified tree has no controllers at all), so it is used whenever systemd's
  tree is on v2: `/sys/fs/cgroup` (pure v2) or `/sys/fs/cgroup/unified` (hybrid).
* cgroup v1 (legacy): `<unit>/cpuacct.usage` (nanoseconds) in the cpuacct hierarchy,
  when no v2 tree of systemd's has cpu.stat. Units appear there only when systemd gives
  them a cpuacct cgroup (CPUAccounting=yes, DefaultCPUAccounting=yes).

Units are the `*.service` and `*.scope` directories inside the top-level slices and their
sub-slices (system.slice/*.service, system.slice/system-getty.slice/getty@tty1.service,
user.slice/user-1000.slice/session-4.scope and user@1000.service, machine.slice/*.scope):
what `systemctl` can throttle and stop. A unit's own sub-cgroups (a user manager's apps, a
container's payload) count towards the unit and are not reported apart. `init.scope`
(PID 1) sits outside every slice and is never reported.

To keep the sample small, a scan reports the `top_n` busiest units at or above
`floor_pct`, plus every unit it reported within the last `linger_s` (with its current
value, 0 once its cgroup is gone): a threshold rule then sees a runaway unit come back
below its clear level, or stop, and resolves, instead of seeing the metric vanish.

For each reported unit at or above `top_process_pct`, the scan also names the process
that used the most CPU since the previous scan (from the unit's `cgroup.procs` and
/proc/PID/stat): the evidence says which PID and command drive the load. This is rare and
bounded (at most `max_procs` processes read per unit).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from agent.model import EMPTY
from agent.sources import procfs

UNIT_SUFFIXES = (".service", ".scope")
#: how deep sub-slices are followed below a top-level slice (system-getty.slice...)
MAX_SLICE_DEPTH = 3
#: v1 hierarchies that hold cpuacct (separate, or co-mounted with cpu)
V1_CPUACCT_DIRS = ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")
#: top-level slices that tell "this is systemd's tree"
SYSTEMD_SLICES = ("system.slice", "user.slice", "machine.slice")

DEFAULT_FLOOR_PCT = 1.0
DEFAULT_TOP_N = 10
DEFAULT_TOP_PROCESS_PCT = 50.0
DEFAULT_LINGER_S = 600.0
DEFAULT_MAX_PROCS = 1000
#: without a systemd tree, look for one again only this often (it does not appear later
#: on a normal host; a scan that finds nothing costs ~70 µs of stat calls)
LAYOUT_RETRY_S = 60.0
COMMAND_MAX = 120

_EMPTY_TOP: Mapping[str, TopProcess] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Layout:
    """Where systemd's units are, and which counter each has."""

    base: str  # the directory holding system.slice, user.slice...
    kind: Literal["v2", "v1"]  # v2: cpu.stat usage_usec; v1: cpuacct.usage (ns)

    @property
    def counter_file(self) -> str:
        return "cpu.stat" if self.kind == "v2" else "cpuacct.usage"


@dataclass(frozen=True, slots=True)
class TopProcess:
    """The process of a unit that used the most CPU over the last scan interval."""

    pid: int
    command: str
    #: its CPU in % of one core over the interval; None on the unit's first hot scan,
    #: when the pick is by CPU time since the process started
    cpu_pct: float | None

    def describe(self) -> str:
        share = (f"{self.cpu_pct:.0f}% of a core" if self.cpu_pct is not None
                 else "most CPU time since it started")
        return f"top process pid {self.pid} ({self.command}), {share}"


@dataclass(frozen=True)
class UnitReading:
    """One scan: unit name → % of one core, and the top process of the hot units."""

    values: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    top: Mapping[str, TopProcess] = field(default_factory=lambda: _EMPTY_TOP)
    #: why nothing could be read (no systemd cgroup tree); "" when the scan worked
    error: str = ""
    layout: Layout | None = None


def find_layout(cgroup_root: str) -> Layout | None:
    """systemd's unit tree under `cgroup_root` (normally /sys/fs/cgroup), or None.

    v2 first (pure, then the hybrid `unified` mount) when one of its slices has
    cpu.stat; else the v1 cpuacct hierarchy when one of its slices has cpuacct.usage.
    """
    candidates: list[Layout] = []
    if Path(cgroup_root, "cgroup.controllers").exists():
        candidates.append(Layout(cgroup_root, "v2"))
    candidates.append(Layout(cgroup_root + "/unified", "v2"))
    candidates += [Layout(f"{cgroup_root}/{d}", "v1") for d in V1_CPUACCT_DIRS]
    for layout in candidates:
        for top in SYSTEMD_SLICES:
            if Path(layout.base, top, layout.counter_file).exists():
                return layout
    return None


def list_units(base: str) -> list[tuple[str, str, int]]:
    """(unit name, cgroup directory, inode) of every unit inside the slices under `base`."""
    out: list[tuple[str, str, int]] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return out
    for entry in entries:
        if entry.name.endswith(".slice") and entry.is_dir(follow_symlinks=False):
            _walk_slice(entry.path, 1, out)
    return out


def _walk_slice(path: str, depth: int, out: list[tuple[str, str, int]]) -> None:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return  # the slice went away between two reads
    for entry in entries:
        name = entry.name
        if name.endswith(UNIT_SUFFIXES):
            if entry.is_dir(follow_symlinks=False):
                out.append((name, entry.path, entry.inode()))
        elif (name.endswith(".slice") and depth < MAX_SLICE_DEPTH
              and entry.is_dir(follow_symlinks=False)):
            _walk_slice(entry.path, depth + 1, out)


def read_usage_usec(path: str, kind: Literal["v2", "v1"]) -> int:
    """Cumulative CPU time of one cgroup in µs (ValueError/OSError when unreadable)."""
    if kind == "v2":
        text = procfs.read_text(path + "/cpu.stat")
        if not text.startswith("usage_usec "):
            raise ValueError("cpu.stat has no usage_usec line first")
        return int(text[11 : text.find("\n")] if "\n" in text else text[11:])
    return int(procfs.read_text(path + "/cpuacct.usage")) // 1000


def parse_cgroup_procs(text: str) -> list[int]:
    return [int(x) for x in text.split()]


def read_proc_ticks(proc_root: str, pid: int) -> tuple[int, str] | None:
    """utime + stime (clock ticks, all threads) and comm of one process, or None if gone."""
    try:
        fd = os.open(f"{proc_root}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    start, end = data.find(b"("), data.rfind(b")")
    if start < 0 or end < start:
        return None
    fields = data[end + 2 :].split()
    try:  # fields[0] is the state (field 3); utime and stime are fields 14 and 15
        ticks = int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None
    return ticks, data[start + 1 : end].decode("utf-8", "replace")


def read_command(proc_root: str, pid: int, comm: str) -> str:
    """The command line (NULs as spaces, at most COMMAND_MAX characters), else comm."""
    try:
        fd = os.open(f"{proc_root}/{pid}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return comm
    try:
        raw = os.read(fd, COMMAND_MAX * 4)
    except OSError:
        raw = b""
    finally:
        os.close(fd)
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)
    if not text:
        return comm  # a kernel thread, or a zombie
    return text if len(text) <= COMMAND_MAX else text[: COMMAND_MAX - 1] + "…"


class UnitCpu:
    """Scans the units' cgroups; `scan(mono)` returns the CPU % since the previous scan.

    The first scan primes the counters and reports nothing. Not thread-safe: the
    sampling loop owns it. Roots are injectable so tests feed captured trees.
    """

    def __init__(
        self,
        cgroup_root: str = "/sys/fs/cgroup",
        proc_root: str = "/proc",
        *,
        floor_pct: float = DEFAULT_FLOOR_PCT,
        top_n: int = DEFAULT_TOP_N,
        top_process_pct: float = DEFAULT_TOP_PROCESS_PCT,
        linger_s: float = DEFAULT_LINGER_S,
        max_procs: int = DEFAULT_MAX_PROCS,
        clock_ticks: int | None = None,
    ) -> None:
        self._root = cgroup_root
        self._proc = proc_root
        self.floor_pct = floor_pct
        self.top_n = top_n
        self.top_process_pct = top_process_pct
        self.linger_s = linger_s
        self.max_procs = max_procs
        self._hz = clock_ticks or os.sysconf("SC_CLK_TCK")
        self._layout: Layout | None = None
        self._missing: tuple[float, UnitReading] | None = None  # when looked, and the answer
        self._prev: dict[str, tuple[int, int]] = {}  # unit -> (inode, usage µs)
        self._prev_mono: float | None = None
        self._reported: dict[str, float] = {}  # unit -> when last at/above the floor
        self._procs: dict[str, dict[int, int]] = {}  # hot unit -> {pid: ticks}

    @property
    def layout(self) -> Layout | None:
        return self._layout

    def scan(self, mono: float) -> UnitReading:
        layout = self._find_layout(mono)
        if layout is None:
            assert self._missing is not None
            return self._missing[1]
        current, paths = self._read_units(layout)
        prev, prev_mono = self._prev, self._prev_mono
        self._prev, self._prev_mono = current, mono
        if prev_mono is None or mono <= prev_mono:
            return UnitReading(layout=layout)
        pct = _percentages(prev, current, mono - prev_mono)
        busy = sorted((u for u, v in pct.items() if v >= self.floor_pct),
                      key=lambda u: (-pct[u], u))[: self.top_n]
        values = self._lingering(busy, pct, mono)
        top: dict[str, TopProcess] = {}
        procs: dict[str, dict[int, int]] = {}
        for unit in (u for u in busy if pct[u] >= self.top_process_pct):
            found = self._top_process(paths[unit], self._procs.get(unit), mono - prev_mono)
            if found is not None:
                top[unit], procs[unit] = found
        self._procs = procs
        return UnitReading(MappingProxyType(values), MappingProxyType(top), layout=layout)

    def _find_layout(self, mono: float) -> Layout | None:
        """The cgroup layout, looked for again at most every LAYOUT_RETRY_S while missing."""
        if self._layout is not None:
            return self._layout
        if self._missing is not None and mono - self._missing[0] < LAYOUT_RETRY_S:
            return None
        self._layout = find_layout(self._root)
        if self._layout is None:
            self._missing = (mono, UnitReading(
                error=f"no systemd cgroup tree under {self._root} (no *.slice with "
                      "cpu.stat or cpuacct.usage)"))
        return self._layout

    @staticmethod
    def _read_units(layout: Layout) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
        """unit -> (inode, usage µs), and unit -> cgroup path."""
        current: dict[str, tuple[int, int]] = {}
        paths: dict[str, str] = {}
        for unit, path, inode in list_units(layout.base):
            try:
                current[unit] = (inode, read_usage_usec(path, layout.kind))
            except (OSError, ValueError):
                continue  # the unit stopped between listing and reading
            paths[unit] = path
        return current, paths

    def _lingering(self, busy: list[str], pct: dict[str, float], mono: float
                   ) -> dict[str, float]:
        """The busy units, and those busy within `linger_s` (a value that drops to the
        floor stays reported for a while, so a detector sees it end)."""
        for unit in busy:
            self._reported[unit] = mono
        values: dict[str, float] = {}
        for unit, at in list(self._reported.items()):
            if mono - at > self.linger_s:
                del self._reported[unit]
            else:
                values[unit] = pct.get(unit, 0.0)
        return values

    # ------------------------------------------------------------------ top process
    def _top_process(
        self, path: str, before: dict[int, int] | None, dt: float
    ) -> tuple[TopProcess, dict[int, int]] | None:
        """The process with the most CPU since `before` (the unit's previous hot scan).

        A PID missing from `before` is new since then, so all its CPU time is recent;
        without `before` (first hot scan) the pick is by CPU time since start.
        """
        ticks: dict[int, int] = {}
        comms: dict[int, str] = {}
        for pid in self._unit_pids(path):
            got = read_proc_ticks(self._proc, pid)
            if got is not None:
                ticks[pid], comms[pid] = got
        if not ticks:
            return None
        deltas = {pid: t - (before.get(pid, 0) if before is not None else 0)
                  for pid, t in ticks.items()}
        pid = max(deltas, key=lambda p: (deltas[p], -p))
        share = None if before is None else max(deltas[pid], 0) * 100.0 / self._hz / dt
        return TopProcess(pid, read_command(self._proc, pid, comms[pid]), share), ticks

    def _unit_pids(self, path: str) -> list[int]:
        """Processes of the unit's cgroup and its sub-cgroups, at most `max_procs`."""
        pids: list[int] = []
        stack = [(path, 0)]
        while stack and len(pids) < self.max_procs:
            here, depth = stack.pop()
            try:
                pids += parse_cgroup_procs(procfs.read_text(here + "/cgroup.procs"))
            except (OSError, ValueError):
                continue
            if depth < MAX_SLICE_DEPTH + 2:
                try:
                    stack += [(e.path, depth + 1) for e in os.scandir(here)
                              if e.is_dir(follow_symlinks=False)]
                except OSError:
                    continue
        return pids[: self.max_procs]


def metric_name(unit: str) -> str:
    return f"unit.{unit}.cpu_pct"


def details_of(reading: UnitReading) -> Mapping[str, str]:
    """Evidence per metric name: which process drives each hot unit."""
    if not reading.top:
        return EMPTY
    return MappingProxyType({metric_name(u): t.describe() for u, t in reading.top.items()})


def _percentages(prev: dict[str, tuple[int, int]], current: dict[str, tuple[int, int]],
                 dt: float) -> dict[str, float]:
    """Each unit's CPU use over `dt` seconds, in % of one core."""
    scale = 100.0 / (dt * 1e6)
    pct: dict[str, float] = {}
    for unit, (inode, usage) in current.items():
        before = prev.get(unit)
        if before is None or before[0] != inode or usage < before[1]:
            delta = usage  # a cgroup new since the last scan: all of it is recent
        else:
            delta = usage - before[1]
        pct[unit] = delta * scale
    return pct
