"""Stop a process: SIGTERM, then SIGKILL after a grace period, through a pidfd.

    python3 -m agent.execute.stop_process stop (--pid N | --name COMM) --grace S
        [--refuse-pid N ...] [--protect UNIT ...]
    python3 -m agent.execute.stop_process gone (--pid N | --name COMM)

The refusals (PID 1, the agent's own PID, kernel threads, processes of protected units)
are checked here, at the moment of acting, as well as by the remediation's preconditions:
a PID can change hands between the check and the act. psutil finds and reads the
processes (name, parent, state, start time); the signals and the waits go through a
pidfd opened on the process that was checked (its start time read again after opening
it), so a recycled PID is never signalled. psutil's own signal calls check the start
time and then signal by PID, which leaves that window open. Exit codes: 0 stopped (or
`gone`: no such process), 1 refused / nothing to stop / still there, 3 still alive after
SIGKILL.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where processes are read: the daemon loads this module to
    import psutil  # check plans, and must not carry psutil for it (docs/architecture.md)

PROC = Path("/proc")
KTHREADD_PID = 2
UNIT_SUFFIXES = (".service", ".scope")
#: psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD
GONE = ("zombie", "dead")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    #: the kernel's comm (/proc/PID/comm, at most 15 characters), not psutil's name():
    #: for a 15-character comm that one is taken from the command line, so a process
    #: named exactly as asked would be missed
    comm: str
    #: psutil's status ("running", "sleeping", "disk-sleep", "zombie"...)
    state: str
    unit: str | None
    #: when it started (seconds since the epoch): the same PID and start time is the same
    #: process
    created: float = 0.0

    @property
    def alive(self) -> bool:
        return self.state not in GONE


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


def _proc_text(pid: int, name: str) -> str:
    """/proc/PID/NAME (psutil has no reader for the cgroup or the raw comm); empty when
    it cannot be read."""
    try:
        return (PROC / str(pid) / name).read_text()
    except OSError:
        return ""


def _info(process: psutil.Process) -> ProcInfo | None:
    import psutil

    try:
        with process.oneshot():
            ppid, state, created = process.ppid(), process.status(), process.create_time()
    except psutil.ZombieProcess:
        return ProcInfo(process.pid, 0, "", psutil.STATUS_ZOMBIE, None)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    comm = _proc_text(process.pid, "comm").removesuffix("\n")
    return ProcInfo(process.pid, ppid, comm, state, unit_of(_proc_text(process.pid, "cgroup")),
                    created)


def read_process(pid: int) -> ProcInfo | None:
    """What psutil says about `pid`, or None when there is no such process."""
    import psutil

    try:
        return _info(psutil.Process(pid))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def find_by_name(name: str) -> list[ProcInfo]:
    """Live processes whose name is exactly `name` (the kernel's comm)."""
    import psutil

    out = []
    for process in psutil.process_iter():
        info = _info(process)
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


def stop_one(info: ProcInfo, grace_s: float, kill_wait_s: float) -> int:
    try:
        pidfd = os.pidfd_open(info.pid)
    except ProcessLookupError:
        print(f"pid {info.pid}: already gone")
        return 0
    try:
        again = read_process(info.pid)  # the pidfd now pins a process: is it the one?
        if again is None or again.created != info.created or not again.alive:
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


def targets(pid: int | None, name: str | None) -> list[ProcInfo]:
    if pid is not None:
        info = read_process(pid)
        return [info] if info is not None and info.alive else []
    return find_by_name(name or "")


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
    # this helper is never its own target (`--name python3` would find it)
    found = [i for i in targets(args.pid, args.name) if i.pid != os.getpid()]
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
