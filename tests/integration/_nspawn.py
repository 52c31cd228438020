"""A throwaway systemd in a volatile container, for tests that need a real PID 1 systemd.

    with booted_container("nwtest1", binds=[tmp]) as c:
        c.run("systemctl", "is-system-running")
        runner = NsenterRunner(c)        # runs plan argv unchanged, inside the container

What works on these machines (PID 1 of the host is not systemd; cgroup v1 + v2 hybrid):

    systemd-nspawn -D / --volatile=yes --boot --register=no --keep-unit
        --private-network --console=pipe --quiet --machine=NAME
        [--bind-ro=PYTHON_PREFIX --bind-ro=REPO --bind=STATE_DIR]
        -- systemd.firstboot=off systemd.unit=basic.target

`--private-network` keeps the container's own services (dovecot, postfix, haproxy, sshd
from the host's /usr) off the host's ports, but makes multi-user.target wait ~2 minutes
for systemd-networkd-wait-online; booting `basic.target` instead is ready in ~1.3 s
(multi-user.target with wait-online masked: ~3.5 s). The leader (the container's PID 1) is
the nspawn process's child; `--register=no` means no machinectl. The Python prefix and
the repository are bind-mounted read-only at the same paths so the agent's helpers
(`python3 -m agent.execute...`) run inside unchanged. Stopping: SIGTERM to nspawn makes
the container power off; SIGKILL if it has not within the bound.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from agent.execute import SubprocessRunner
from agent.model import Step, StepResult

REPO = Path(__file__).resolve().parents[2]
NSPAWN_FLAGS = ("--volatile=yes", "--boot", "--register=no", "--keep-unit",
                "--private-network", "--console=pipe", "--quiet")
KERNEL_ARGS = ("systemd.firstboot=off", "systemd.unit=basic.target")
BOOT_TIMEOUT_S = 90.0


@dataclass
class Container:
    name: str
    proc: subprocess.Popen[bytes]
    leader: int
    log: Path
    boot_seconds: float

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("nsenter", "-t", str(self.leader), "-a", "--")

    @property
    def root(self) -> Path:
        """The container's / as seen from the host (its /run is its own tmpfs)."""
        return Path(f"/proc/{self.leader}/root")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def check(self, *argv: str, timeout: float = 60) -> str:
        proc = self.run(*argv, timeout=timeout)
        assert proc.returncode == 0, f"{argv} -> {proc.returncode}: {proc.stderr}"
        return proc.stdout

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


class NsenterRunner:
    """Runs each step's argv inside the container; the StepResult keeps the plan's argv."""

    executes = True

    def __init__(self, container: Container, inner: SubprocessRunner | None = None) -> None:
        self._prefix = container.prefix
        self._inner = inner or SubprocessRunner()

    def run(self, step: Step) -> StepResult:
        result = self._inner.run(replace(step, argv=(*self._prefix, *step.argv)))
        return replace(result, argv=step.argv)


def python_binds() -> list[str]:
    """Read-only binds that make this interpreter and the repository visible inside."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), REPO}
    return [f"--bind-ro={p}" for p in sorted(paths) if not str(p).startswith("/usr")]


def _wait_leader(proc: subprocess.Popen[bytes], deadline: float) -> int:
    """The container's PID 1: nspawn's child once it has exec'd systemd."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in children.read_text().split():
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if exe.endswith("/systemd"):
                return int(pid)
        time.sleep(0.02)  # no event tells us when nspawn has forked and exec'd
    raise RuntimeError("systemd-nspawn did not start a systemd leader")


def _wait_booted(leader: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait for the container's bus, then let systemd itself wait for the boot to end."""
    bus = Path(f"/proc/{leader}/root/run/systemd/private")
    while not bus.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the container's systemd never opened its bus")
        time.sleep(0.02)  # polled: the socket appears inside another mount namespace
    left = max(1.0, deadline - time.monotonic())
    state = subprocess.run(
        ["nsenter", "-t", str(leader), "-a", "--", "systemctl", "is-system-running", "--wait"],
        capture_output=True, text=True, timeout=left, check=False).stdout.strip()
    if state not in ("running", "degraded"):
        raise RuntimeError(f"container boot ended in state {state!r}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@contextmanager
def booted_container(
    name: str, binds: Sequence[Path] = (), extra_args: Sequence[str] = ()
) -> Iterator[Container]:
    """Boot a volatile container of this machine's /usr; always stopped on exit."""
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        log = Path(tmp) / "console.log"
        argv = ["systemd-nspawn", "-D", "/", *NSPAWN_FLAGS, f"--machine={name}",
                *python_binds(), *(f"--bind={b}" for b in binds), *extra_args,
                "--", *KERNEL_ARGS]
        start = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = start + BOOT_TIMEOUT_S
            leader = _wait_leader(proc, deadline)
            try:
                _wait_booted(leader, proc, deadline)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                raise RuntimeError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from exc
            yield Container(name, proc, leader, log, time.monotonic() - start)
        finally:
            stop(proc)
