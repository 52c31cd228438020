"""A throwaway systemd in a `systemd-nspawn` volatile container (docs/architecture.md "Testing
with real parts").

`--volatile=yes` gives the container a tmpfs root with the host's /usr read-only; this
Python (pyenv under /root) and the checkout are bound in read-only, so the installed
console script runs inside. The container is entered with `nsenter -t PID -a`, its files
are written through /proc/PID/root, and it is always powered off (then killed) on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

BOOT_DEADLINE_S = 60.0
REPO = Path(__file__).resolve().parents[2]


def console_script() -> Path:
    """The real `nodewarden` script next to this interpreter (not a pyenv shim)."""
    path = Path(sys.executable).parent / "nodewarden"
    assert path.exists(), f"{path} missing: pip install -e . with {sys.executable}"
    return path


def _binds() -> list[str]:
    """Read-only binds the container needs: the interpreter's prefix and the checkout."""
    out = []
    for p in {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), REPO}:
        if not str(p).startswith("/usr"):
            out.append(f"--bind-ro={p}")
    # pyenv keeps versions under its root; bind the whole root so shims resolve too
    return sorted(set(out))


class Container:
    def __init__(self, workdir: Path) -> None:
        nspawn = shutil.which("systemd-nspawn")
        assert nspawn is not None, "systemd-nspawn missing: apt-get install systemd-container"
        self.console_log = workdir / "nspawn-console.log"
        with self.console_log.open("wb") as out:
            self.proc = subprocess.Popen(
                # --private-network and basic.target: the host's own dovecot, postfix,
                # sshd... must not start inside on the host's network (its ports)
                [nspawn, "-D", "/", "--volatile=yes", "--boot", "--register=no",
                 "--keep-unit", "--private-network", *_binds(), "--",
                 "systemd.firstboot=off", "systemd.unit=basic.target"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        self.pid = self._init_pid()
        self.root = Path(f"/proc/{self.pid}/root")

    def _init_pid(self) -> int:
        end = time.monotonic() + BOOT_DEADLINE_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"nspawn exited: {self.console_log.read_text()}")
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                    kids = (task / "children").read_text().split()
                    if kids:
                        return int(kids[0])
            time.sleep(0.1)
        raise AssertionError("no init process in the container")

    def run(self, argv: Sequence[str], check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(["nsenter", "-t", str(self.pid), "-a", *argv], text=True,
                            capture_output=True, timeout=timeout, check=False)
        if check and cp.returncode != 0:
            raise AssertionError(f"{argv} failed ({cp.returncode}): {cp.stdout}{cp.stderr}")
        return cp

    def wait_booted(self) -> str:
        end = time.monotonic() + BOOT_DEADLINE_S
        state = ""
        while time.monotonic() < end:
            cp = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            state = cp.stdout.strip() or cp.stderr.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        raise AssertionError(f"container did not boot: {state!r}\n"
                             f"{self.console_log.read_text(errors='replace')[-3000:]}")

    def write(self, path: str, text: str) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def show(self, unit: str, prop: str) -> str:
        cp = self.run(["systemctl", "show", "-p", prop, "--value", unit])
        return cp.stdout.strip()

    def stop(self) -> None:
        """Power off (SIGTERM makes nspawn ask init to halt); kill if it takes too long."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def booted_container(workdir: Path) -> Iterator[Container]:
    assert os.geteuid() == 0, "systemd-nspawn needs root"
    container = Container(workdir)
    try:
        container.wait_booted()
        yield container
    finally:
        container.stop()
