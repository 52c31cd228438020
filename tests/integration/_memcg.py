"""Real OOM kills, harmless to the machine: a process in a memory cgroup of our own with a
small limit allocates until the kernel's memory-cgroup OOM killer kills it.

The cgroup is made where `systemd-run -p MemoryMax=32M` would put a transient unit
(`/system.slice/NAME.service`, or a session scope under `/user.slice/user-UID.slice/`),
so the kernel prints exactly the report it prints for such a unit. It is made by hand
because these machines have no systemd as PID 1, and a container's systemd gets the
memory controller read-only (docs/facts.md). The limit applies only to our process; the
cgroups we created are removed afterwards.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from agent.sources.lineformat import parse_line
from tests.integration._provoked import record

CGROUP = Path("/sys/fs/cgroup")
LIMIT_BYTES = 32 * 1024 * 1024

#: run as: python -c HOG COMM PROCS_FILE — joins the cgroup, takes the name, eats memory
HOG = """
import os, sys
comm, procs = sys.argv[1], sys.argv[2]
with open(procs, "w") as f:
    f.write(str(os.getpid()))
with open("/proc/self/comm", "w") as f:
    f.write(comm)
chunks = []
while True:
    chunks.append(bytearray(1 << 20))
"""


def memory_hierarchy() -> tuple[Path, str]:
    """Where the memory controller is: the v1 `memory` hierarchy, or cgroup v2."""
    v1 = CGROUP / "memory"
    if (v1 / "memory.limit_in_bytes").exists():
        return v1, "v1"
    controllers = CGROUP / "cgroup.controllers"
    assert controllers.exists() and "memory" in controllers.read_text().split(), \
        "no memory cgroup controller on this machine"
    return CGROUP, "v2"


@contextlib.contextmanager
def memory_limited(relative: str, limit: int = LIMIT_BYTES) -> Iterator[Path]:
    """A cgroup at `relative` (e.g. "system.slice/nwoom1.service") limited to `limit`."""
    root, kind = memory_hierarchy()
    made: list[Path] = []
    path = root
    for part in relative.split("/"):
        if kind == "v2":
            with contextlib.suppress(OSError):
                (path / "cgroup.subtree_control").write_text("+memory")
        path = path / part
        if not path.exists():
            path.mkdir()
            made.append(path)
    if kind == "v1":
        (path / "memory.limit_in_bytes").write_text(str(limit))
    else:
        (path / "memory.max").write_text(str(limit))
        with contextlib.suppress(OSError):
            (path / "memory.swap.max").write_text("0")
    try:
        yield path
    finally:
        for cg in reversed(made):
            with contextlib.suppress(OSError):
                cg.rmdir()


def oom_kill(cgroup: Path, comm: str, timeout_s: float = 120.0) -> int:
    """Run a memory hog named `comm` in `cgroup` until the kernel kills it; its pid.

    The kernel's report of the kill is genuine trouble in its log: the lines that name
    the pid are recorded (tests/integration/_provoked.py) so the dmesg check excuses
    them."""
    proc = subprocess.Popen([sys.executable, "-c", HOG, comm, str(cgroup / "cgroup.procs")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        proc.wait(timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -9, f"not OOM-killed: {proc.returncode} {proc.stderr!r}"
    record_report(proc.pid)
    return proc.pid


def record_report(pid: int) -> None:
    """Record the kernel's lines about the kill of `pid` as provoked by a test."""
    out = subprocess.run(["dmesg", "--facility=kern"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    mine = [parse_line(raw).text for raw in out.splitlines()
            if f",pid={pid}," in raw or f"process {pid} (" in raw]
    assert mine, f"the kernel's report of the kill of {pid} is not in its log"
    record(*mine)
