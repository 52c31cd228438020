"""SSH targets for the Ansible rollout test: each a real systemd booted in a
`systemd-nspawn --volatile` container, joined to a network namespace the test made, with
its own sshd (Debian's ssh.service from the host's /usr) that the controller logs in to
as root with a key of the test's.

    with ansible_targets(["coord", "agent1"], work) as fleet:
        fleet.net.coordinator            # the controller's namespace (the bridge)
        fleet.targets["agent1"].address  # where the controller reaches it
        fleet.key, fleet.known_hosts     # the controller's key, the targets' pinned keys

The namespaces are tests/integration/_fleet.py's: a bridge in the controller's namespace,
one namespace per target joined to it by a veth pair. A container's /etc is a fresh
tmpfs, so what a Debian host has there and the roles rely on is written through
/proc/PID/root: sshd's configuration and host key, root's authorized_keys, and the PAM
configuration (`su`, the roles' become method, needs it). Everything is stopped on exit,
whatever happened: the containers (powered off, then killed), every process the test
left in its namespaces (ssh's ControlPersist masters), then the namespaces.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration._fleet import FleetNet, fleet_namespaces
from tests.integration._nspawn import KERNEL_ARGS, _wait_booted, _wait_leader, stop
from tests.integration._sshd import keypair

BOOT_DEADLINE_S = 90.0
#: what a Debian host's /etc has and a volatile container's lacks: PAM for `su`
HOST_ETC = ("pam.d", "security", "login.defs", "environment", "default/locale")
SSHD_CONFIG = """\
Include /etc/ssh/sshd_config.d/*.conf
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
"""


@dataclass
class Target:
    name: str
    address: str
    proc: subprocess.Popen[bytes]
    leader: int = 0
    console: Path = field(default_factory=Path)

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.leader}/root")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def check(self, *argv: str) -> str:
        done = self.run(*argv)
        assert done.returncode == 0, f"{self.name}: {argv}: {done.stdout}{done.stderr}"
        return done.stdout

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)


@dataclass
class Fleet:
    net: FleetNet
    targets: dict[str, Target]
    key: Path
    known_hosts: Path


def _start(name: str, machine: str, ns: str, address: str, console: Path) -> Target:
    argv = ["systemd-nspawn", "-D", "/", "--volatile=yes", "--boot", "--register=no",
            "--keep-unit", f"--network-namespace-path=/run/netns/{ns}", "--console=pipe",
            "--quiet", f"--machine={machine}", "--", *KERNEL_ARGS]
    with console.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Target(name, address, proc, console=console)


def _booted(target: Target, deadline: float) -> None:
    target.leader = _wait_leader(target.proc, deadline)
    try:
        _wait_booted(target.leader, target.proc, deadline)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log = target.console.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{target.name}: {exc}\n{log}") from exc


def _prepare(target: Target, client_pub: str, host_key: Path) -> None:
    """The Debian /etc the roles expect, sshd with a host key of the test's, root's key."""
    for rel in HOST_ETC:
        src, dst = Path("/etc") / rel, target.root / "etc" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
    # its address only: listening on the wildcards, this sshd fails to bind again when a
    # reload (SIGHUP) re-executes it in the container ("Address already in use")
    target.write("/etc/ssh/sshd_config", f"{SSHD_CONFIG}ListenAddress {target.address}\n")
    (target.root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    target.write("/etc/ssh/ssh_host_ed25519_key", host_key.read_text(), 0o600)
    target.write("/etc/ssh/ssh_host_ed25519_key.pub", Path(f"{host_key}.pub").read_text())
    target.write("/root/.ssh/authorized_keys", client_pub + "\n", 0o600)
    (target.root / "root/.ssh").chmod(0o700)
    # systemd-sysusers makes root's password "!*": sshd without PAM refuses a locked account
    target.check("usermod", "-p", "*", "root")
    # what Debian's openssh-server package makes when it is installed
    target.check("useradd", "--system", "--no-create-home", "--home-dir", "/run/sshd",
                 "--shell", "/usr/sbin/nologin", "sshd")
    started = target.run("systemctl", "start", "ssh.service")
    assert started.returncode == 0, target.run("journalctl", "-u", "ssh.service",
                                               "--no-pager").stdout


def _kill_namespace_processes(namespaces: list[str]) -> None:
    """Whatever the test left running in its own namespaces (ssh masters), by pid."""
    for ns in namespaces:
        done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              check=False)
        for pid in done.stdout.split():
            subprocess.run(["kill", "-KILL", pid], capture_output=True, check=False)


@contextlib.contextmanager
def ansible_targets(names: list[str], work: Path) -> Iterator[Fleet]:
    work.mkdir(parents=True, exist_ok=True)
    key = work / "controller_key"
    client_pub = keypair(key)
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(fleet_namespaces(names, prefix="nwa"))
        stack.callback(_kill_namespace_processes, [net.coordinator, *net.ns.values()])
        targets: dict[str, Target] = {}
        for i, name in enumerate(names):
            target = _start(name, f"{net.ns[name]}m{i}", net.ns[name], net.addresses[name],
                            work / f"{name}-console.log")
            stack.callback(stop, target.proc)
            targets[name] = target
        known = []
        for name, target in targets.items():
            _booted(target, time.monotonic() + BOOT_DEADLINE_S)
            host_key = work / f"{name}_host_key"
            pub = keypair(host_key)
            _prepare(target, client_pub, host_key)
            known.append(f"{target.address} {' '.join(pub.split()[:2])}")
        known_hosts = work / "known_hosts"
        known_hosts.write_text("\n".join(known) + "\n")
        yield Fleet(net, targets, key, known_hosts)

