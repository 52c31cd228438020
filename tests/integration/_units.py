"""The shipped units (systemd/), as `systemd-analyze` sees them and installed in a booted
container (tests/integration/_nspawn_daemon.py): what test_systemd_units.py and
test_systemd_real.py share.

In the container the units run this checkout with this Python, bound read-only at their
host paths; the test drop-in (`sandbox_dropin`) only makes those paths visible through
the units' own sandbox (a Python under /root, a checkout under /tmp), never loosens
anything else. The coordinator's user is created inside the container only: its /etc
is the volatile tmpfs, and `add_coordinator_user` refuses to run if it is not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.integration._nspawn_daemon import REPO, Container
from tests.integration._wait import poll

T = TypeVar("T")

SYSTEMD = REPO / "systemd"
AGENT = "nodewarden.service"
SERVE = "nodewarden-coordinator.service"
WATCH = "nodewarden-coordinator-watch.service"
TIMER = "nodewarden-coordinator-watch.timer"
UNITS = (AGENT, SERVE, WATCH, TIMER)
USER = "nodewarden-coordinator"
#: where the units expect the console scripts (the README's install links them there)
SHIPPED_BIN = "/usr/local/bin/"


def script(name: str) -> Path:
    """The console script `name` next to this interpreter (not a pyenv shim)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{path} missing: pip install -e . with {sys.executable}"
    return path


def installed_text(unit: str) -> str:
    """The unit as shipped, its ExecStart= naming this checkout's console scripts."""
    text = (SYSTEMD / unit).read_text()
    return re.sub(r"/usr/local/bin/(nodewarden(?:-coordinator)?)\b",
                  lambda m: str(script(m.group(1))), text)


def write_units(directory: Path) -> list[Path]:
    """Every unit, as installed_text(), in `directory` (verify checks that the binaries
    exist and that a timer's service is there)."""
    out = []
    for unit in UNITS:
        path = directory / unit
        path.write_text(installed_text(unit))
        out.append(path)
    return out


def verify(*units: Path) -> str:
    """All of `systemd-analyze verify`'s output: it exits 0 on unknown keys."""
    cp = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                        capture_output=True, text=True, check=False)
    return (cp.stdout + cp.stderr).strip()


def security(unit: Path) -> tuple[float, list[str]]:
    """`systemd-analyze security --offline=yes`: the overall exposure and every line of
    the table that is not ✓ (what docs/deploy.md must justify)."""
    cp = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                        capture_output=True, text=True, check=False)
    text = cp.stdout + cp.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", text)
    assert found is not None, text
    exposed = [line.rstrip() for line in text.splitlines()
               if line.startswith("✗")]
    return float(found.group(1)), exposed


def sandbox_dropin() -> str:
    """[Service] lines that let a unit's sandbox see this checkout and this Python where
    the test machine keeps them (production installs under /opt and /usr/local)."""
    lines = ["[Service]", f"Environment=PYTHONPATH={REPO}"]
    paths = sorted({REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()})
    hidden = [p for p in paths if str(p).startswith(("/root/", "/home/", "/tmp/", "/var/tmp/"))]
    if any(str(p).startswith(("/root/", "/home/")) for p in hidden):
        lines.append("ProtectHome=tmpfs")  # the homes stay hidden, but for these binds
    lines += [f"BindReadOnlyPaths={p}" for p in hidden]
    return "\n".join(lines) + "\n"


def install(c: Container, *units: str, extra: str = "") -> None:
    """`units` into the container's /etc/systemd/system, each with the sandbox drop-in
    (and `extra`, a drop-in of the test's own, for the first unit), then daemon-reload."""
    for i, unit in enumerate(units):
        c.write(f"/etc/systemd/system/{unit}", installed_text(unit))
        if unit.endswith(".service"):
            c.write(f"/etc/systemd/system/{unit}.d/10-test-paths.conf", sandbox_dropin())
        if extra and i == 0:
            c.write(f"/etc/systemd/system/{unit}.d/20-test.conf", extra)
    c.run(["systemctl", "daemon-reload"])


def journal(c: Container, unit: str) -> str:
    return c.run(["journalctl", "-u", unit, "--no-pager", "-o", "cat"], check=False).stdout


def wait_for(look: Callable[[], T | None], timeout_s: float, what: Callable[[], str]) -> T:
    """`look()` until it returns something; an AssertionError with `what()` if not."""
    found = poll(look, timeout_s, interval_s=0.1)
    assert found is not None, what()
    return found


def _volatile(c: Container, path: str) -> None:
    """`path` in the container is on its own volatile root, not this machine's."""
    inside, outside = os.stat(c.root / path.lstrip("/")), os.stat(path)
    assert inside.st_dev != outside.st_dev, f"{path} of the container is the host's"


def add_coordinator_user(c: Container) -> int:
    """The coordinator's system user, inside the container only (docs/deploy.md: a home
    in its state directory, a shell for sshd's forced command, an unlocked password
    field for `UsePAM no`); its uid. The container's /root (a tmpfs of its own) is
    opened so that the user reaches this Python, bound under it."""
    _volatile(c, "/etc")
    c.run(["useradd", "--system", "--user-group", "--home-dir", f"/var/lib/{USER}",
           "--no-create-home", "--shell", "/bin/sh", USER])
    c.run(["usermod", "--password", "*", USER])
    if str(Path(sys.base_prefix).resolve()).startswith("/root/"):
        _volatile(c, "/root")
        (c.root / "root").chmod(0o755)
    return int(c.run(["id", "-u", USER]).stdout)


def as_coordinator(c: Container, *args: str, stdin: str = "",
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`nodewarden-coordinator ARGS` as its user in the container, outside any unit (as
    sshd's forced command and an operator's `keys add` run). setpriv, not runuser: the
    container's volatile /etc has no PAM configuration (sshd with `UsePAM no` uses none
    either)."""
    argv = ["nsenter", "-t", str(c.pid), "-a", "setpriv", f"--reuid={USER}",
            f"--regid={USER}", "--clear-groups", "--", "env", f"PYTHONPATH={REPO}",
            str(script("nodewarden-coordinator")), *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
