"""What the metrics sampler measures: every name with its unit, source and meaning.

Incident replays and threshold rules refer to these names, so each is declared here;
docs/metrics.md is generated from the declarations (`python -m agent.sources.metricsdoc`)
and a test checks the two agree. The cadences of the slower parts are declared here too,
because the descriptions quote them.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    MetricSpec("fs.<mountpoint>.used_pct", "%", "statvfs() in a thread",
               "space used as df shows it: used / (used + available to non-root), for "
               "each of metrics.filesystems; measured every "
               f"{FS_INTERVAL_S:g} s, each call in a daemon thread of its own, at most one "
               "per mount in flight; a call outstanding for longer than "
               "metrics.fs_timeout_s makes the mount hung (a hard NFS mount whose server "
               "is gone), and the mount gets no new call until that one returns",
               "statvfs failed, or the mount is hung (its call has not returned for "
               "longer than metrics.fs_timeout_s), not measured yet, or the last value "
               "is stale"),
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
