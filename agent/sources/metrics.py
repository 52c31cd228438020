"""The metrics sampler: one MetricSample of flat, stable names per call (docs/metrics.md).

Incident replays and threshold rules refer to these names, so each is declared below
with its unit, source and meaning; docs/metrics.md is generated from the declarations
(`python -m agent.sources.metricsdoc`) and a test checks the two agree.

Cost: `sample()` reads eight small /proc files with raw syscalls and parses them with
plain string operations (~0.1 ms of CPU). The slower parts run on their own cadence:
the D-state task scan (one read per process) every `dstate_interval_s`, the per-unit CPU
scan (one read per systemd unit, agent/sources/cgroups.py) every `unit_cpu_interval_s`,
filesystem use (a helper process, a hung NFS mount must not hang the agent) and the mail
queue (a command) in worker threads whose latest value is cached. The half-open
connection tables (/proc/net/tcp and tcp6, possibly megabytes) are read only under SYN
pressure, and at most SYNRECV_MAX_BYTES of them.

Rates and percentages of CPU time come from deltas, so the sampler takes a priming read
when it is constructed: the first `sample()` already has rates over the time since then.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from agent.clock import Clock
from agent.model import MetricSample
from agent.sources import procfs
from agent.sources.cgroups import UnitCpu, UnitReading, details_of, metric_name
from agent.sources.fsusage import FsReading, FsUsage
from agent.sources.mailq import MailQueue, QueueReading
from agent.sources.periodic import Periodic
from agent.sources.settings import MetricsSettings

#: default cadences of the slow parts (seconds)
DSTATE_INTERVAL_S = 5.0
#: ... and while the host looks quiet (no I/O waiters, load1 < 1, no D-state task at the
#: last scan): each scan reads every /proc/PID/stat, the largest part of idle CPU
DSTATE_QUIET_INTERVAL_S = 30.0
UNIT_CPU_INTERVAL_S = 5.0
FS_INTERVAL_S = 10.0
MAILQ_INTERVAL_S = 30.0

#: half-open (SYN_RECV) connections per listening port and remote address: the top
#: SYNRECV_TOP_N addresses per port with at least SYNRECV_MIN entries each, read from at
#: most SYNRECV_MAX_BYTES of /proc/net/tcp and tcp6 together, only under SYN pressure;
#: an address reported before stays listed (its current count, 0 when gone) for
#: SYNRECV_LINGER_S, scanning on meanwhile, so a rule sees its count come down
SYNRECV_TOP_N = 10
SYNRECV_MIN = 2
SYNRECV_MAX_BYTES = 4 << 20
SYNRECV_LINGER_S = 300.0
#: during a flood the half-open tables are read at most this often (cost: docs/metrics.md)
SYNRECV_INTERVAL_S = 5.0

#: device name prefixes left out of disk.* unless named in metrics.disks
SKIPPED_DISK_PREFIXES = ("loop", "ram", "zram")


# --------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class MetricSpec:
    """One metric (or family: `<dev>`, `<mountpoint>`, `<name>` stand for a part)."""

    name: str
    unit: str
    source: str
    description: str
    unavailable: str = ""


PSI_RESOURCES = ("io", "cpu", "memory")
PSI_KINDS = ("some", "full")
PSI_WINDOWS = ("avg10", "avg60")

_RATE_NOTE = (
    "absent (not listed) when no time passed since the previous read or a counter went "
    "backwards"
)

_DISK_NOTE = (
    _RATE_NOTE + "; absent for a device new since the previous read; `disk.<dev>.*` is "
    "listed unavailable when /proc/diskstats cannot be read"
)


def _psi_specs() -> tuple[MetricSpec, ...]:
    specs = []
    for res in PSI_RESOURCES:
        for kind in PSI_KINDS:
            for window in PSI_WINDOWS:
                share = "some task" if kind == "some" else "all non-idle tasks"
                specs.append(
                    MetricSpec(
                        f"psi_{res}_{kind}_{window}", "%", f"/proc/pressure/{res}",
                        f"share of time {share} stalled on {res}, averaged over "
                        f"{window[3:]} s (pressure stall information)",
                        "kernel without PSI (< 4.20, or booted with psi=0)"
                        + ("; cpu full before kernel 5.13" if (res, kind) == ("cpu", "full")
                           else ""),
                    )
                )
    return tuple(specs)


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("load1", "tasks", "/proc/loadavg",
               "load average over 1 min (runnable plus D-state tasks)"),
    MetricSpec("load5", "tasks", "/proc/loadavg", "load average over 5 min"),
    MetricSpec("load15", "tasks", "/proc/loadavg", "load average over 15 min"),
    MetricSpec("load1_per_cpu", "tasks/CPU", "/proc/loadavg, /proc/stat",
               "load1 divided by the number of online CPUs"),
    MetricSpec("cpu_user_pct", "%", "/proc/stat",
               "CPU time in user space (user + nice) since the previous sample",
               _RATE_NOTE),
    MetricSpec("cpu_system_pct", "%", "/proc/stat",
               "CPU time in the kernel (system + irq + softirq) since the previous sample",
               _RATE_NOTE),
    MetricSpec("cpu_idle_pct", "%", "/proc/stat", "CPU time idle since the previous sample",
               _RATE_NOTE),
    MetricSpec("cpu_iowait_pct", "%", "/proc/stat",
               "CPU time idle while I/O was outstanding since the previous sample",
               _RATE_NOTE),
    MetricSpec("cpu_steal_pct", "%", "/proc/stat",
               "CPU time the hypervisor gave to others (degraded cloud hardware)",
               _RATE_NOTE),
    MetricSpec("procs_running", "tasks", "/proc/stat", "tasks runnable right now"),
    MetricSpec("procs_blocked", "tasks", "/proc/stat",
               "tasks blocked waiting for I/O right now (the kernel's nr_iowait; "
               "D-state waits that are not I/O waits, e.g. on a lock, are not counted)"),
    MetricSpec("procs_dstate", "tasks", "/proc/[pid]/stat",
               f"processes in D state (uninterruptible sleep) at the last scan, every "
               f"{DSTATE_INTERVAL_S:g} s by default, every {DSTATE_QUIET_INTERVAL_S:g} s "
               "while the host is quiet (procs_blocked 0, load1 < 1, none at the last "
               "scan); their names are MetricSample.blocked_tasks",
               "/proc cannot be listed"),
    MetricSpec("tcp_listen_overflows_per_s", "1/s", "/proc/net/netstat",
               "TcpExt ListenOverflows: connections dropped because a listen queue "
               "(accept backlog) was full", _RATE_NOTE),
    MetricSpec("tcp_listen_drops_per_s", "1/s", "/proc/net/netstat",
               "TcpExt ListenDrops: SYNs dropped at a listener for any reason "
               "(includes overflows)", _RATE_NOTE),
    MetricSpec("tcp_syncookies_sent_per_s", "1/s", "/proc/net/netstat",
               "TcpExt SyncookiesSent: SYN cookies sent (a SYN queue overflowed: flood)",
               _RATE_NOTE),
    MetricSpec("tcp_reqq_full_do_cookies_per_s", "1/s", "/proc/net/netstat",
               "TcpExt TCPReqQFullDoCookies: SYN queue full, answered with a cookie",
               _RATE_NOTE),
    MetricSpec("tcp_reqq_full_drop_per_s", "1/s", "/proc/net/netstat",
               "TcpExt TCPReqQFullDrop: SYN queue full and cookies off, SYN dropped",
               _RATE_NOTE),
    MetricSpec("tcp_synrecv.<port>.<address>", "connections",
               "/proc/net/tcp, /proc/net/tcp6 (state 03, SYN_RECV)",
               "half-open connections to local port <port> from remote <address> (a "
               "SYN flood's sources: `tcp_synrecv.443.203.0.113.5`; IPv4-mapped IPv6 "
               "addresses as IPv4, IPv6 as `tcp_synrecv.443.2001:db8::7`). Read only "
               "while the same sample shows SYN pressure (tcp_syncookies_sent_per_s, "
               "tcp_listen_overflows_per_s or tcp_listen_drops_per_s above 0) and for "
               f"{SYNRECV_LINGER_S:g} s after an address was last reported; only the "
               f"{SYNRECV_TOP_N} addresses with the most entries per port, at least "
               f"{SYNRECV_MIN} each, plus (at their current count, 0 once gone) those "
               f"reported in the last {SYNRECV_LINGER_S:g} s. At most "
               f"{SYNRECV_MAX_BYTES >> 20} MiB of the two files are read per scan, at most "
               f"every {SYNRECV_INTERVAL_S:g} s (between scans, the last values; about "
               "28,000 sockets); when they are longer the counts cover that part only and "
               "MetricSample.details says so. While SYN cookies are sent the kernel keeps "
               "no entry for a cookie answered SYN, so the counts show the sources that "
               "filled the SYN queue (at most its backlog), not the whole flood",
               "absent without SYN pressure (nothing read); listed unavailable when "
               "neither file can be read"),
    *_psi_specs(),
    MetricSpec("mem_available_pct", "%", "/proc/meminfo",
               "MemAvailable / MemTotal: memory available without swapping",
               "kernel before 3.14 (no MemAvailable)"),
    MetricSpec("swap_used_pct", "%", "/proc/meminfo",
               "(SwapTotal - SwapFree) / SwapTotal; 0 when there is no swap"),
    MetricSpec("disk.<dev>.iops", "1/s", "/proc/diskstats",
               "completed reads + writes + discards + flushes per second. Whole disks "
               "only (no partitions, loop, ram or zram devices) unless metrics.disks "
               "names devices", _DISK_NOTE),
    MetricSpec("disk.<dev>.await_ms", "ms", "/proc/diskstats",
               "mean time an I/O completed since the previous sample took, queueing "
               "included (iostat's await); 0 when none completed",
               _DISK_NOTE),
    MetricSpec("disk.<dev>.util_pct", "%", "/proc/diskstats",
               "share of time the device had I/O in flight (iostat's %util, capped at "
               "100)", _DISK_NOTE),
    MetricSpec("fs.<mountpoint>.used_pct", "%", "statvfs() in a helper process",
               "space used as df shows it: used / (used + available to non-root), for "
               "each of metrics.filesystems; measured every "
               f"{FS_INTERVAL_S:g} s in a helper process with metrics.fs_timeout_s",
               "statvfs failed or timed out (a hung NFS mount), a killed helper is still "
               "stuck, not measured yet, or the last value is stale"),
    MetricSpec("mailq_size", "messages", "metrics.mailq_command",
               "messages in the mail queue, counted from the command's output "
               "(postqueue -j JSON lines, mailq text or a bare number); run every "
               f"{MAILQ_INTERVAL_S:g} s with metrics.mailq_timeout_s",
               "no command configured, it failed, timed out or printed an unknown format"),
    MetricSpec("unit.<unit>.cpu_pct", "% of one CPU",
               "cgroup v2 <unit>/cpu.stat usage_usec, else v1 <unit>/cpuacct.usage",
               "CPU used by one systemd unit's cgroup (a *.service or *.scope in a slice: "
               "system.slice, user.slice/user-N.slice, machine.slice) since the previous "
               f"scan, every {UNIT_CPU_INTERVAL_S:g} s; 200 = two cores busy. Only the 10 "
               "busiest units at or above 1 %, plus for 10 min any unit reported before "
               "(0 once it is gone), so a rule sees it come down. For a unit at or above "
               "50 %, MetricSample.details names the process that used the most CPU",
               "no systemd cgroup tree (a host or container without systemd as PID 1); "
               "absent on the first scan and for units below the floor"),
    MetricSpec("probe.<name>.ok", "0/1", "probes (agent/sources/probes.py)",
               "1 when the probe named <name> in [probes.<name>] succeeded"),
    MetricSpec("probe.<name>.latency_ms", "ms", "probes (agent/sources/probes.py)",
               "time the probe took to get its answer", "the probe did not connect"),
)

PSI_NAMES = tuple(s.name for s in METRICS if s.name.startswith("psi_"))

_TCP_RATES = (
    ("ListenOverflows", "tcp_listen_overflows_per_s"),
    ("ListenDrops", "tcp_listen_drops_per_s"),
    ("SyncookiesSent", "tcp_syncookies_sent_per_s"),
    ("TCPReqQFullDoCookies", "tcp_reqq_full_do_cookies_per_s"),
    ("TCPReqQFullDrop", "tcp_reqq_full_drop_per_s"),
)

#: any of these above 0 in a sample is SYN pressure: then the half-open scan runs
_SYN_PRESSURE = ("tcp_syncookies_sent_per_s", "tcp_listen_overflows_per_s",
                 "tcp_listen_drops_per_s")
_SYNRECV_FAMILY = "tcp_synrecv.<port>.<address>"


# --------------------------------------------------------------------------- counters
@dataclass(frozen=True, slots=True)
class _Counters:
    """Cumulative counters kept from one read to the next, for the deltas."""

    mono: float
    cpu: procfs.CpuTimes | None
    tcp: Mapping[str, int] | None
    disks: Mapping[str, procfs.DiskCounters] | None


class MetricsSampler:
    """Reads /proc (and /sys for the list of whole disks) under injectable roots, so tests
    feed captured trees. Not thread-safe: the sampling loop owns it.

    With `background=False` no worker thread starts: call `refresh_slow()` to measure
    filesystem use and the mail queue in the caller's thread (tests, benchmarks).
    """

    def __init__(
        self,
        settings: MetricsSettings,
        clock: Clock,
        proc_root: Path = Path("/proc"),
        sys_root: Path = Path("/sys"),
        *,
        background: bool = True,
        dstate_interval_s: float = DSTATE_INTERVAL_S,
        fs_interval_s: float = FS_INTERVAL_S,
        mailq_interval_s: float = MAILQ_INTERVAL_S,
        fs_usage: FsUsage | None = None,
        mail_queue: MailQueue | None = None,
        unit_cpu_interval_s: float = UNIT_CPU_INTERVAL_S,
        unit_cpu: UnitCpu | None = None,
        synrecv_max_bytes: int = SYNRECV_MAX_BYTES,
    ) -> None:
        self.settings = settings
        self._clock = clock
        proc = str(proc_root)
        self._proc = proc
        self._sys_block = str(sys_root / "block")
        self._paths = {
            name: f"{proc}/{name}"
            for name in ("loadavg", "stat", "net/netstat", "diskstats", "meminfo")
        }
        self._psi_paths = {res: f"{proc}/pressure/{res}" for res in PSI_RESOURCES}
        # the real /proc is regenerated by each read: keep its files open (ProcFiles)
        self._files = procfs.ProcFiles(keep_open=Path(proc).resolve() == Path("/proc"))
        self._dstate_interval_s = dstate_interval_s
        self._dstate_at: float | None = None
        self._dstate: tuple[int, tuple[str, ...]] | None = None
        self._dstate_error = ""
        self._disk_names: tuple[str, ...] = ()
        self._disk_selection: tuple[str, ...] = ()

        self._fs_usage = fs_usage or FsUsage(settings.filesystems, settings.fs_timeout_s)
        self._mail_queue = mail_queue or MailQueue(
            settings.mailq_command, settings.mailq_timeout_s
        )
        self._fs: Periodic[dict[str, FsReading]] = Periodic(
            "fs-usage", self._fs_usage.measure, fs_interval_s, clock
        )
        self._mailq: Periodic[QueueReading] = Periodic(
            "mailq", self._mail_queue.measure, mailq_interval_s, clock
        )
        # a cached value older than this is reported stale (its worker is stuck or dead)
        self._fs_max_age = 3 * fs_interval_s + settings.fs_timeout_s * len(
            settings.filesystems
        ) + 1
        self._mailq_max_age = 3 * mailq_interval_s + settings.mailq_timeout_s + 1

        self._unit_cpu = unit_cpu or UnitCpu(str(sys_root / "fs/cgroup"), proc)
        self._unit_interval_s = unit_cpu_interval_s
        self._unit_at: float | None = None
        self._units = UnitReading()

        self._tcp_paths = (f"{proc}/net/tcp", f"{proc}/net/tcp6")
        self._synrecv_seen: dict[tuple[int, str], float] = {}
        self._synrecv_last: tuple[float, dict[str, float], dict[str, str]] | None = None
        self._synrecv_max_bytes = synrecv_max_bytes

        self._prev = self._read_counters({}, {}, set())
        self._scan_dstate_if_due(quiet=False)
        self._scan_units_if_due()
        if background:
            if settings.filesystems:
                self._fs.start()
            if settings.mailq_command:
                self._mailq.start()

    # ----------------------------------------------------------------------------- public
    def sample(self) -> MetricSample:
        values: dict[str, float] = {}
        reasons: dict[str, str] = {}
        unavailable: set[str] = set()
        self._read_gauges(values, reasons, unavailable)
        current = self._read_counters(values, reasons, unavailable)
        self._rates(self._prev, current, values)
        self._prev = current
        blocked = self._dstate_values(values, reasons, unavailable)
        details = self._unit_values(values, reasons, unavailable)
        synrecv_notes = self._synrecv_values(values, reasons, unavailable)
        if synrecv_notes:
            details = MappingProxyType({**details, **synrecv_notes})
        self._slow_values(values, reasons, unavailable)
        return MetricSample(
            t=self._clock.now(),
            values=MappingProxyType(values),
            unavailable=frozenset(unavailable),
            blocked_tasks=blocked,
            reasons=MappingProxyType(reasons),
            details=details,
        )

    def refresh_slow(self) -> None:
        """Measure filesystem use and the mail queue now, in this thread."""
        if self.settings.filesystems:
            self._fs.run_once()
        if self.settings.mailq_command:
            self._mailq.run_once()

    def wait_slow(self, timeout_s: float) -> bool:
        """Wait until the background workers cached their first values (one-shot use)."""
        ok = True
        if self.settings.filesystems:
            ok = self._fs.wait_first(timeout_s) and ok
        if self.settings.mailq_command:
            ok = self._mailq.wait_first(timeout_s) and ok
        return ok

    def close(self) -> None:
        """Stop the workers and the statvfs helper; close the /proc files."""
        self._fs.stop()
        self._mailq.stop()
        self._fs_usage.close()
        self._files.close()

    def __enter__(self) -> MetricsSampler:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- gauges
    def _read_gauges(
        self, values: dict[str, float], reasons: dict[str, str], unavailable: set[str]
    ) -> None:
        try:
            load = procfs.parse_loadavg(self._files.read(self._paths["loadavg"]))
            values["load1"], values["load5"], values["load15"] = load
        except (OSError, ValueError) as exc:
            _mark(("load1", "load5", "load15", "load1_per_cpu"), f"/proc/loadavg: {exc}",
                  reasons, unavailable)
        for res, path in self._psi_paths.items():
            try:
                psi = procfs.parse_pressure(self._files.read(path))
            except (OSError, ValueError) as exc:
                psi = {}
                why = "no pressure stall information (PSI)" if isinstance(
                    exc, FileNotFoundError) else f"{path}: {exc}"
            else:
                why = f"{path} has no such line (older kernel)"
            for kind in PSI_KINDS:
                names = (f"psi_{res}_{kind}_avg10", f"psi_{res}_{kind}_avg60")
                pair = psi.get(kind)
                if pair is None:
                    _mark(names, why, reasons, unavailable)
                else:
                    values[names[0]], values[names[1]] = pair
        try:
            mem = procfs.parse_meminfo(self._files.read(self._paths["meminfo"]))
        except (OSError, ValueError) as exc:
            _mark(("mem_available_pct", "swap_used_pct"), f"/proc/meminfo: {exc}",
                  reasons, unavailable)
        else:
            total, available = mem.get("MemTotal"), mem.get("MemAvailable")
            if total and available is not None:
                values["mem_available_pct"] = 100.0 * available / total
            else:
                _mark(("mem_available_pct",), "no MemAvailable in /proc/meminfo",
                      reasons, unavailable)
            swap_total = mem.get("SwapTotal", 0)
            swap_free = mem.get("SwapFree", 0)
            values["swap_used_pct"] = (
                100.0 * (swap_total - swap_free) / swap_total if swap_total > 0 else 0.0
            )

    # ----------------------------------------------------------------------------- counters
    def _read_counters(
        self, values: dict[str, float], reasons: dict[str, str], unavailable: set[str]
    ) -> _Counters:
        cpu = None
        try:
            stat = procfs.parse_stat(self._files.read(self._paths["stat"]))
        except (OSError, ValueError) as exc:
            _mark(("procs_running", "procs_blocked", "load1_per_cpu", *_CPU_NAMES),
                  f"/proc/stat: {exc}", reasons, unavailable)
        else:
            cpu = stat.cpu
            values["procs_running"] = float(stat.procs_running)
            values["procs_blocked"] = float(stat.procs_blocked)
            if "load1" in values:
                values["load1_per_cpu"] = values["load1"] / stat.ncpu
        tcp: dict[str, int] | None = None
        try:
            tcp = procfs.parse_tcpext(self._files.read(self._paths["net/netstat"]))
        except (OSError, ValueError) as exc:
            _mark([n for _, n in _TCP_RATES], f"/proc/net/netstat: {exc}",
                  reasons, unavailable)
        disks: dict[str, procfs.DiskCounters] | None = None
        try:
            all_disks = procfs.parse_diskstats(self._files.read(self._paths["diskstats"]))
        except (OSError, ValueError) as exc:
            _mark(("disk.<dev>.*",), f"/proc/diskstats: {exc}", reasons, unavailable)
        else:
            disks = {name: all_disks[name] for name in self._select_disks(all_disks)}
        return _Counters(self._clock.monotonic(), cpu, tcp, disks)

    def _rates(self, prev: _Counters, cur: _Counters, values: dict[str, float]) -> None:
        """Deltas between two reads; a rate whose counter went backwards is left out."""
        dt = cur.mono - prev.mono
        if prev.cpu is not None and cur.cpu is not None:
            a, b = prev.cpu, cur.cpu
            total = b.total - a.total
            if total > 0:
                scale = 100.0 / total
                values["cpu_user_pct"] = (b.user + b.nice - a.user - a.nice) * scale
                values["cpu_system_pct"] = (
                    b.system + b.irq + b.softirq - a.system - a.irq - a.softirq
                ) * scale
                values["cpu_idle_pct"] = (b.idle - a.idle) * scale
                values["cpu_iowait_pct"] = (b.iowait - a.iowait) * scale
                values["cpu_steal_pct"] = (b.steal - a.steal) * scale
        if dt <= 0:
            return
        if prev.tcp is not None and cur.tcp is not None:
            for counter, name in _TCP_RATES:
                before, after = prev.tcp.get(counter), cur.tcp.get(counter)
                if before is not None and after is not None and after >= before:
                    values[name] = (after - before) / dt
        if prev.disks is not None and cur.disks is not None:
            for dev, b_ in cur.disks.items():
                a_ = prev.disks.get(dev)
                if a_ is None:
                    continue
                ios = b_.ios - a_.ios
                wait = b_.io_wait_ms - a_.io_wait_ms
                busy = b_.busy_ms - a_.busy_ms
                if ios < 0 or wait < 0 or busy < 0:
                    continue  # counters reset: the device was replaced
                values[f"disk.{dev}.iops"] = ios / dt
                values[f"disk.{dev}.await_ms"] = wait / ios if ios else 0.0
                values[f"disk.{dev}.util_pct"] = min(100.0, busy / (dt * 10.0))

    def _select_disks(self, all_disks: Mapping[str, procfs.DiskCounters]) -> tuple[str, ...]:
        """Configured disks, else whole disks (those in /sys/block) minus loop/ram/zram.

        Recomputed only when the set of devices in /proc/diskstats changes.
        """
        names = tuple(all_disks)
        if names == self._disk_names:
            return self._disk_selection
        if self.settings.disks:
            selection = tuple(n for n in self.settings.disks if n in all_disks)
        else:
            try:
                whole = set(os.listdir(self._sys_block))  # noqa: PTH208 (hot path: no Path objects)
            except OSError:
                whole = {n for n in names if not _looks_like_partition(n, all_disks)}
            selection = tuple(
                n for n in names if n in whole and not n.startswith(SKIPPED_DISK_PREFIXES)
            )
        self._disk_names, self._disk_selection = names, selection
        return selection

    # ----------------------------------------------------------------------------- D state
    def _scan_dstate_if_due(self, quiet: bool) -> None:
        now = self._clock.monotonic()
        interval = max(self._dstate_interval_s, DSTATE_QUIET_INTERVAL_S) if quiet else (
            self._dstate_interval_s)
        if self._dstate_at is not None and now - self._dstate_at < interval:
            return
        self._dstate_at = now
        try:
            names = procfs.scan_dstate(self._proc)
        except OSError as exc:
            self._dstate, self._dstate_error = None, f"cannot list {self._proc}: {exc}"
            return
        self._dstate = (len(names), tuple(sorted(set(names))))

    def _dstate_values(
        self, values: dict[str, float], reasons: dict[str, str], unavailable: set[str]
    ) -> tuple[str, ...]:
        quiet = (
            values.get("procs_blocked", 1.0) == 0 and values.get("load1", 1.0) < 1.0
            and (self._dstate is None or self._dstate[0] == 0)
        )
        self._scan_dstate_if_due(quiet)
        if self._dstate is None:
            _mark(("procs_dstate",), self._dstate_error, reasons, unavailable)
            return ()
        values["procs_dstate"] = float(self._dstate[0])
        return self._dstate[1]

    # ----------------------------------------------------------------------------- units
    def _scan_units_if_due(self) -> None:
        now = self._clock.monotonic()
        if self._unit_at is not None and now - self._unit_at < self._unit_interval_s:
            return
        self._unit_at = now
        self._units = self._unit_cpu.scan(now)

    def _unit_values(
        self, values: dict[str, float], reasons: dict[str, str], unavailable: set[str]
    ) -> Mapping[str, str]:
        """The last unit scan's values (kept between scans, like the D-state scan)."""
        self._scan_units_if_due()
        reading = self._units
        if reading.error:
            _mark(("unit.<unit>.cpu_pct",), reading.error, reasons, unavailable)
            return MappingProxyType({})
        for unit, pct in reading.values.items():
            values[metric_name(unit)] = pct
        return details_of(reading)

    # ----------------------------------------------------------------------------- SYN_RECV
    def _synrecv_values(
        self, values: dict[str, float], reasons: dict[str, str], unavailable: set[str]
    ) -> dict[str, str]:
        """tcp_synrecv.<port>.<address>; the details note a scan cut at the read bound.

        Costs one dict lookup per pressure counter while there is no SYN pressure and no
        address lingers: the tables are read only during (and just after) a flood.
        """
        seen = self._synrecv_seen
        if not seen and not any(values.get(n, 0.0) > 0 for n in _SYN_PRESSURE):
            return {}
        now = self._clock.monotonic()
        cached = self._synrecv_last
        if cached is not None and now - cached[0] < SYNRECV_INTERVAL_S:
            # a flood's table can be megabytes (1-15 ms to read): every few seconds is
            # enough for a rule that wants it sustained; between scans, the last values
            values.update(cached[1])
            return dict(cached[2])
        counts: dict[tuple[int, str], int] = {}
        budget, truncated, read_any = self._synrecv_max_bytes, False, False
        errors: list[str] = []
        for path in self._tcp_paths:
            if budget <= 0:
                truncated = True
                break
            try:
                text, cut = procfs.read_bounded(path, budget)
            except FileNotFoundError:
                continue  # no tcp6 on a host without IPv6
            except OSError as exc:
                errors.append(f"{path}: {exc}")
                continue
            read_any = True
            budget -= len(text)
            truncated = truncated or cut
            procfs.count_synrecv(text, counts)
        if not read_any:
            _mark((_SYNRECV_FAMILY,), "; ".join(errors) or "no /proc/net/tcp or tcp6",
                  reasons, unavailable)
        top = procfs.top_per_port(counts, SYNRECV_TOP_N, SYNRECV_MIN)
        for key in top:
            seen[key] = now
        notes: dict[str, str] = {}
        for key, last in list(seen.items()):
            if now - last > SYNRECV_LINGER_S:
                del seen[key]
                continue
            name = f"tcp_synrecv.{key[0]}.{key[1]}"
            values[name] = float(counts.get(key, 0))
            if truncated:
                notes[name] = (f"counted in the first {self._synrecv_max_bytes} bytes of "
                               "/proc/net/tcp and tcp6 only (more sockets than that)")
        found = {n: v for n, v in values.items() if n.startswith("tcp_synrecv.")}
        self._synrecv_last = (now, found, notes) if read_any else None
        return notes

    # ----------------------------------------------------------------------------- cached
    def _slow_values(
        self, values: dict[str, float], reasons: dict[str, str], unavailable: set[str]
    ) -> None:
        now = self._clock.monotonic()
        mounts = self.settings.filesystems
        fs_names = [f"fs.{m}.used_pct" for m in mounts]
        cached_fs = self._fs.latest()
        if not mounts:
            pass
        elif cached_fs is None:
            _mark(fs_names, "not measured yet", reasons, unavailable)
        elif now - cached_fs[1] > self._fs_max_age:
            _mark(fs_names, f"stale: last measured {now - cached_fs[1]:.0f} s ago",
                  reasons, unavailable)
        else:
            for mount, name in zip(mounts, fs_names, strict=True):
                reading = cached_fs[0].get(mount)
                if reading is not None and reading.used_pct is not None:
                    values[name] = reading.used_pct
                else:
                    _mark((name,), reading.reason if reading else "not measured",
                          reasons, unavailable)
        cached_q = self._mailq.latest()
        if not self.settings.mailq_command:
            _mark(("mailq_size",), "metrics.mailq_command is not configured",
                  reasons, unavailable)
        elif cached_q is None:
            _mark(("mailq_size",), "not measured yet", reasons, unavailable)
        elif now - cached_q[1] > self._mailq_max_age:
            _mark(("mailq_size",), f"stale: last measured {now - cached_q[1]:.0f} s ago",
                  reasons, unavailable)
        elif cached_q[0].size is None:
            _mark(("mailq_size",), cached_q[0].reason, reasons, unavailable)
        else:
            values["mailq_size"] = float(cached_q[0].size)


_CPU_NAMES = ("cpu_user_pct", "cpu_system_pct", "cpu_idle_pct", "cpu_iowait_pct",
              "cpu_steal_pct")


def _mark(
    names: tuple[str, ...] | list[str], reason: str, reasons: dict[str, str],
    unavailable: set[str],
) -> None:
    for name in names:
        unavailable.add(name)
        reasons[name] = reason


def _looks_like_partition(name: str, all_disks: Mapping[str, object]) -> bool:
    """Without /sys: `sda1`, `nvme0n1p2`, `mmcblk0p1` are partitions of a listed disk."""
    stem = name.rstrip("0123456789")
    if stem == name:
        return False
    return stem in all_disks or (stem.endswith("p") and stem[:-1] in all_disks)
