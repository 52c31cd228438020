"""Pure parsers for the /proc files the metrics sampler reads every second.

Each parser takes the file's text and returns plain values; the sampler does the
reading and the deltas. Plain string operations only (no regex per line): this is the
per-second hot path, and a storage host can have hundreds of disks and processes.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass

#: the /proc/net/netstat TcpExt counters the sampler turns into rates
TCPEXT_COUNTERS = (
    "ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPReqQFullDoCookies",
    "TCPReqQFullDrop",
)

#: the /proc/meminfo keys the sampler uses (values in kB)
MEMINFO_KEYS = ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")


def read_text(path: str) -> str:
    """The whole file, read with raw syscalls (cheaper than open() for small /proc files).

    /proc files are generated per read() call and may come in several pieces, so read
    until end of file rather than trusting one short read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = [os.read(fd, 65536)]
        while parts[-1]:
            parts.append(os.read(fd, 65536))
        return b"".join(parts).decode("ascii", "replace")
    finally:
        os.close(fd)


class ProcFiles:
    """Reads the same small files every second, keeping them open when that is safe.

    A /proc file is generated anew by every read at offset 0, so an open fd read with
    pread(fd, n, 0) gives fresh content without an open() and close() per sample
    (about 40% of the read cost at a once-a-second pace, docs/facts.md). A captured
    tree (tests) is ordinary files that are replaced between samples: `keep_open=False`
    reopens them each time.
    """

    def __init__(self, *, keep_open: bool) -> None:
        self.keep_open = keep_open
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> str:
        if not self.keep_open:
            return read_text(path)
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            parts = [os.pread(fd, 65536, 0)]
            while len(parts[-1]) == 65536:
                parts.append(os.pread(fd, 65536, 65536 * len(parts)))
        except OSError:
            self._forget(path)
            raise
        return b"".join(parts).decode("ascii", "replace")

    def _forget(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for path in list(self._fds):
            self._forget(path)


# --------------------------------------------------------------------------- /proc/loadavg
def parse_loadavg(text: str) -> tuple[float, float, float]:
    """`0.00 0.02 0.01 1/99 10382` → (load1, load5, load15)."""
    a, b, c = text.split(None, 3)[:3]
    return float(a), float(b), float(c)


# --------------------------------------------------------------------------- /proc/stat
@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Aggregate CPU time in clock ticks (the `cpu` line of /proc/stat).

    guest and guest_nice are already counted in user and nice, so they are left out.
    """

    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int

    @property
    def total(self) -> int:
        return (
            self.user + self.nice + self.system + self.idle + self.iowait + self.irq
            + self.softirq + self.steal
        )


@dataclass(frozen=True, slots=True)
class StatInfo:
    cpu: CpuTimes
    ncpu: int
    procs_running: int
    procs_blocked: int


def _int_after(text: str, key: str) -> int:
    """The integer following `key` at the start of a line, e.g. `procs_running 3`."""
    i = text.find("\n" + key)
    if i < 0:
        raise ValueError(f"no {key.strip()} line")
    i += len(key) + 1
    j = text.find("\n", i)
    return int(text[i:j] if j >= 0 else text[i:])


def parse_stat(text: str) -> StatInfo:
    """The aggregate cpu line, the number of online CPUs and procs_running/blocked."""
    end = text.find("\n")
    fields = text[:end].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("first line is not the aggregate cpu line")
    nums = [int(x) for x in fields[1:9]]
    nums += [0] * (8 - len(nums))  # very old kernels have no steal column
    cpu = CpuTimes(*nums)
    ncpu = text.count("\ncpu")  # per-CPU lines cpu0..cpuN follow the aggregate line
    return StatInfo(
        cpu=cpu,
        ncpu=max(ncpu, 1),
        procs_running=_int_after(text, "procs_running "),
        procs_blocked=_int_after(text, "procs_blocked "),
    )


# --------------------------------------------------------------------------- /proc/net/netstat
def parse_tcpext(text: str, wanted: tuple[str, ...] = TCPEXT_COUNTERS) -> dict[str, int]:
    """The `wanted` counters of the TcpExt header/value line pair of /proc/net/netstat.

    Only the wanted ones are converted: the line has ~120 counters and this runs every
    second (absent ones, on older kernels, are simply missing)."""
    i = text.find("TcpExt:")
    if i < 0:
        raise ValueError("no TcpExt lines")
    j = text.find("\n", i)
    k = text.find("\n", j + 1)
    names = text[i:j].split()
    values = text[j + 1 : k if k >= 0 else len(text)].split()
    if len(names) != len(values) or values[:1] != ["TcpExt:"]:
        raise ValueError("TcpExt header and value lines do not pair up")
    return {n: int(values[names.index(n)]) for n in wanted if n in names}


# --------------------------------------------------------------------------- /proc/pressure/*
def parse_pressure(text: str) -> dict[str, tuple[float, float]]:
    """`some avg10=0.25 avg60=0.21 avg300=0.27 total=4598487` lines → {"some": (10, 60)}.

    The `full` line of cpu exists only from kernel 5.13 on, so callers must not expect it.
    """
    out: dict[str, tuple[float, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[1].startswith("avg10=") or not parts[2].startswith(
            "avg60="
        ):
            continue
        out[parts[0]] = (float(parts[1][6:]), float(parts[2][6:]))
    return out


# --------------------------------------------------------------------------- /proc/diskstats
@dataclass(frozen=True, slots=True)
class DiskCounters:
    """Cumulative counters of one device (Documentation/admin-guide/iostats.rst).

    Discard (4.18+) and flush (5.5+) columns count as I/Os too, as iostat counts them.
    """

    ios: int  # completed reads + writes + discards + flushes
    io_wait_ms: int  # time spent by those I/Os (read + write + discard + flush ms)
    busy_ms: int  # time the device had I/O in flight ("io_ticks")


def parse_diskstats(text: str) -> dict[str, DiskCounters]:
    out: dict[str, DiskCounters] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 14:
            continue
        ios = int(f[3]) + int(f[7])
        wait = int(f[6]) + int(f[10])
        if len(f) >= 18:
            ios += int(f[14])
            wait += int(f[17])
        if len(f) >= 20:
            ios += int(f[18])
            wait += int(f[19])
        out[f[2]] = DiskCounters(ios=ios, io_wait_ms=wait, busy_ms=int(f[12]))
    return out


# --------------------------------------------------------------------------- /proc/meminfo
def parse_meminfo(text: str, keys: tuple[str, ...] = MEMINFO_KEYS) -> dict[str, int]:
    """The wanted `Key:   123 kB` values (kB); absent keys are simply missing."""
    out: dict[str, int] = {}
    for key in keys:
        i = 0 if text.startswith(key + ":") else text.find("\n" + key + ":") + 1
        if i == 0 and not text.startswith(key + ":"):
            continue
        j = text.find("\n", i)
        out[key] = int(text[i + len(key) + 1 : j if j >= 0 else len(text)].split(None, 1)[0])
    return out


# --------------------------------------------------------------------------- /proc/[pid]/stat
def task_name_and_state(data: bytes) -> tuple[str, str]:
    """`812 (nfsd) D 2 0 0 …` → ("nfsd", "D").

    The name is inside the first "(" and the *last* ")": a process may call itself
    `a) R (b`, so neither a split nor the first ")" is safe.
    """
    start = data.find(b"(")
    end = data.rfind(b")")
    if start < 0 or end < start:
        raise ValueError("not a /proc/[pid]/stat line")
    return data[start + 1 : end].decode("utf-8", "replace"), data[end + 2 : end + 3].decode(
        "ascii", "replace"
    )


def scan_dstate(proc_root: str) -> list[str]:
    """Names of the processes in D state (uninterruptible sleep), one per process.

    Costs one open/read/close per process (about 3 µs each), so the sampler runs it on
    its own slower cadence. Only each process's main thread is looked at: kernel threads
    (nfsd, jbd2, kworker) are processes of their own, so the storage cases are covered.
    """
    names: list[str] = []
    base = proc_root + "/"
    for entry in os.listdir(proc_root):  # noqa: PTH208 (hot path: no Path objects)
        if not entry.isdigit():
            continue
        try:
            fd = os.open(base + entry + "/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # the process exited between listdir and open
        try:
            data = os.read(fd, 1024)
        except OSError:
            continue
        finally:
            os.close(fd)
        end = data.rfind(b")")
        if data[end + 2 : end + 3] == b"D":
            names.append(task_name_and_state(data)[0])
    return names


# --------------------------------------------------------------------------- /proc/net/tcp{,6}
#: the `st` column of a half-open connection (a request socket awaiting the client's ACK)
TCP_SYN_RECV = "03"


def read_bounded(path: str, max_bytes: int) -> tuple[str, bool]:
    """At most `max_bytes` of a file (cut at the last whole line) and whether it was cut.

    /proc/net/tcp holds one ~150-byte line per socket; on a busy server it is megabytes,
    and the kernel generates it per read() call, so a reader must be able to stop.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        size = 0
        while size < max_bytes:
            chunk = os.read(fd, min(65536, max_bytes - size))
            if not chunk:
                return b"".join(parts).decode("ascii", "replace"), False
            parts.append(chunk)
            size += len(chunk)
        truncated = bool(os.read(fd, 1))
    finally:
        os.close(fd)
    data = b"".join(parts)
    if truncated:
        data = data[: data.rfind(b"\n") + 1]
    return data.decode("ascii", "replace"), truncated


def _hex_address(text: str) -> str:
    """A /proc/net/tcp{,6} address: 32-bit words in host byte order, printed as hex.

    IPv4-mapped IPv6 addresses (`::ffff:203.0.113.5`, a dual-stack listener's IPv4
    clients) come back as IPv4, the form block-addresses and the auth logs use.
    """
    raw = b"".join(int(text[i : i + 8], 16).to_bytes(4, sys.byteorder)
                   for i in range(0, len(text), 8))
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


def count_synrecv(text: str, counts: dict[tuple[int, str], int]) -> None:
    """Add the SYN_RECV entries of one /proc/net/tcp or tcp6 text to `counts`, keyed by
    (local port, remote address). Lines of other states cost one substring test."""
    for line in text.splitlines():
        if " 03 " not in line:  # st is the only zero-padded field between spaces
            continue
        f = line.split(None, 4)
        if len(f) < 4 or f[3] != TCP_SYN_RECV:
            continue
        try:
            port = int(f[1].rpartition(":")[2], 16)
            addr = _hex_address(f[2].rpartition(":")[0])
        except ValueError:
            continue
        key = (port, addr)
        counts[key] = counts.get(key, 0) + 1


def top_per_port(
    counts: dict[tuple[int, str], int], top_n: int, minimum: int
) -> dict[tuple[int, str], int]:
    """The `top_n` addresses with the most entries per port, each with at least `minimum`."""
    by_port: dict[int, list[tuple[int, str]]] = {}
    for (port, addr), n in counts.items():
        if n >= minimum:
            by_port.setdefault(port, []).append((n, addr))
    out: dict[tuple[int, str], int] = {}
    for port, entries in by_port.items():
        entries.sort(key=lambda e: (-e[0], e[1]))
        for n, addr in entries[:top_n]:
            out[(port, addr)] = n
    return out
