"""Stop a process: SIGTERM, then SIGKILL after a grace period, through a pidfd.

    python3 -m agent.execute.stop_process stop (--pid N | --name COMM) --grace S
        [--refuse-pid N ...] [--protect UNIT ...]
    python3 -m agent.execute.stop_process gone (--pid N | --name COMM)

The refusals (PID 1, the agent's own PID, kernel threads, processes of protected units)
are checked here, at the moment of acting, as well as by the remediation's preconditions:
a PID can change hands between the check and the act. A pidfd pins the process we
checked, so a recycled PID is never signalled. Exit codes: 0 stopped (or `gone`: no such
process), 1 refused / nothing to stop / still there, 3 still alive after SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
KTHREADD_PID = 2
UNIT_SUFFIXES = (".service", ".scope")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    state: str
    unit: str | None

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def unit_of(cgroup_text: str) -> str | None:
    """The systemd unit a process belongs to, from /proc/PID/cgroup (v2 or v1 name=systemd)."""
    paths = []
    for line in cgroup_text.splitlines():
        _, controllers, path = ([*line.split(":", 2), "", ""])[:3]
        if controllers in ("", "name=systemd"):
            paths.append(path)
    for path in paths:
        for part in reversed(path.split("/")):
            if part.endswith(UNIT_SUFFIXES):
                return part
    return None


def read_process(pid: int, proc: Path = PROC) -> ProcInfo | None:
    """What /proc says about `pid`, or None when there is no such process."""
    base = proc / str(pid)
    try:
        stat = (base / "stat").read_text()
        cgroup = (base / "cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) S ppid ...": comm may contain spaces and parentheses
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return ProcInfo(pid, int(fields[1]), comm, fields[0], unit_of(cgroup))


def find_by_name(name: str, proc: Path = PROC) -> list[ProcInfo]:
    """Live processes whose comm (the kernel's 15-character name) is exactly `name`."""
    out = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            info = read_process(int(entry.name), proc)
            if info is not None and info.comm == name and info.alive:
                out.append(info)
    return sorted(out, key=lambda i: i.pid)


def refusal(info: ProcInfo, refuse_pids: Iterable[int], protected: Iterable[str]) -> str | None:
    """Why this process must never be stopped, or None."""
    if info.pid == 1:
        return f"pid 1 ({info.comm}) is init"
    if info.pid in set(refuse_pids):
        return f"pid {info.pid} ({info.comm}) is refused (the agent itself)"
    if KTHREADD_PID in (info.pid, info.ppid):
        return f"pid {info.pid} ({info.comm}) is a kernel thread"
    if info.unit is not None and info.unit in set(protected):
        return f"pid {info.pid} ({info.comm}) belongs to protected unit {info.unit}"
    return None


def _wait_exit(pidfd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def stop_one(info: ProcInfo, grace_s: float, kill_wait_s: float, proc: Path = PROC) -> int:
    try:
        pidfd = os.pidfd_open(info.pid)
    except ProcessLookupError:
        print(f"pid {info.pid}: already gone")
        return 0
    try:
        again = read_process(info.pid, proc)
        if again is None or again.comm != info.comm or not again.alive:
            print(f"pid {info.pid}: already gone")
            return 0
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except ProcessLookupError:
            return 0
        if _wait_exit(pidfd, grace_s):
            print(f"pid {info.pid} ({info.comm}): exited after SIGTERM")
            return 0
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return 0
        if _wait_exit(pidfd, kill_wait_s):
            print(f"pid {info.pid} ({info.comm}): killed after {grace_s:g}s grace")
            return 0
        print(f"pid {info.pid} ({info.comm}): still alive after SIGKILL (D state?)",
              file=sys.stderr)
        return 3
    finally:
        os.close(pidfd)


def targets(pid: int | None, name: str | None, proc: Path = PROC) -> list[ProcInfo]:
    if pid is not None:
        info = read_process(pid, proc)
        return [info] if info is not None and info.alive else []
    return find_by_name(name or "", proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m agent.execute.stop_process")
    parser.add_argument("cmd", choices=("stop", "gone"))
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int)
    who.add_argument("--name")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--kill-wait", type=float, default=5.0)
    parser.add_argument("--refuse-pid", type=int, action="append", default=[])
    parser.add_argument("--protect", action="append", default=[])
    args = parser.parse_args(argv)
    found = targets(args.pid, args.name)
    label = f"pid {args.pid}" if args.pid is not None else f"name {args.name!r}"
    if args.cmd == "gone":
        if found:
            print(f"{label}: still running: {', '.join(str(i.pid) for i in found)}")
            return 1
        print(f"{label}: no such process")
        return 0
    if not found:
        print(f"{label}: no such process", file=sys.stderr)
        return 1
    allowed = []
    for info in found:
        why = refusal(info, args.refuse_pid, args.protect)
        if why:
            print(f"refused: {why}", file=sys.stderr)
        else:
            allowed.append(info)
    if not allowed:
        return 1
    return max(stop_one(info, args.grace, args.kill_wait) for info in allowed)


if __name__ == "__main__":
    sys.exit(main())
