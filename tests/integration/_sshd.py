"""A real OpenSSH sshd on 127.0.0.1 for the coordinator's tests, and clients for it.

`running_sshd(authorized_keys)` starts Debian's /usr/sbin/sshd in the foreground with a
configuration, host key and pid file of its own under a fresh temp dir (never the
machine's /etc/ssh), on a free loopback port, key authentication only, the keys read
from `authorized_keys` (the coordinator's file). It waits until the port answers and
always stops sshd and removes the dir. `client_key()` makes an agent's key pair;
`ssh_command()` is the OpenSSH client's argv with the server's host key pinned
(StrictHostKeyChecking yes, a known_hosts of that key only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.integration._mailservers import (
    LOOPBACK,
    START_TIMEOUT_S,
    free_port,
    wait_for_port,
)
from tests.integration._proctree import kill_tree
from tests.integration._wait import poll

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class Sshd:
    port: int
    host_key_pub: str
    known_hosts: Path
    log: Path
    #: where it listens (127.0.0.1, or an address in the namespace it runs in)
    address: str = LOOPBACK


def keypair(path: Path) -> str:
    """A new ed25519 key at `path` (no passphrase); its public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test key",
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    return Path(f"{path}.pub").read_text().strip()


@contextlib.contextmanager
def running_sshd(authorized_keys: Path, *, host_key: Path | None = None,
                 port: int | None = None, netns: str | None = None,
                 address: str = LOOPBACK) -> Iterator[Sshd]:
    """sshd as above; `host_key` and `port` given, a restart of the same server (its key
    made at `host_key` when it does not exist yet). `netns`: run inside that network
    namespace (one the test made), listening on `address` there (`port` required); it
    is up once its log says it listens (the namespace's port cannot be tried from here)."""
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    work = Path(tempfile.mkdtemp(prefix="nw-sshd-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        host_key = host_key or work / "host_ed25519"
        pub = (Path(f"{host_key}.pub").read_text().strip() if host_key.exists()
               else keypair(host_key))
        assert netns is None or port is not None, "a namespace's sshd needs its port"
        port = port or free_port()
        config = work / "sshd_config"
        log = work / "sshd.log"
        config.write_text("\n".join([
            f"Port {port}", f"ListenAddress {address}", f"HostKey {host_key}",
            f"PidFile {work / 'sshd.pid'}", f"AuthorizedKeysFile {authorized_keys}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "AllowTcpForwarding no", "X11Forwarding no", "PrintMotd no",
            "MaxStartups 100:30:200", "MaxSessions 10", "LogLevel VERBOSE", "",
        ]))
        known = work / "known_hosts"
        known.write_text(f"[{address}]:{port} {' '.join(pub.split()[:2])}\n")
        inside = ["ip", "netns", "exec", netns] if netns else []
        proc = subprocess.Popen([*inside, SSHD, "-D", "-e", "-f", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        if netns:
            _wait_listening(proc, log, address, port)
        else:
            wait_for_port(port, proc, log)
        yield Sshd(port, pub, known, log, address)
    finally:
        if proc is not None:
            stop_sshd(proc)
        shutil.rmtree(work, ignore_errors=True)


def _wait_listening(proc: subprocess.Popen[bytes], log: Path, address: str, port: int
                    ) -> None:
    """Until sshd's log says it listens on `address` `port` (fails if sshd exits)."""
    said = f"Server listening on {address} port {port}."
    up = poll(lambda: said in log.read_text(errors="replace") or None, START_TIMEOUT_S,
              give_up=lambda: proc.poll() is not None)
    assert up, f"sshd in its namespace did not listen:\n{log.read_text(errors='replace')}"


def stop_sshd(proc: subprocess.Popen[bytes]) -> None:
    """The listener and every connection's sshd (each in a session of its own: they
    outlive the listener unless killed too), then their commands."""
    kill_tree(proc)


def ssh_command(server: Sshd, key: Path, *remote: str) -> list[str]:
    """The OpenSSH client, as root, with `key`, the server's host key pinned."""
    return ["ssh", "-T", "-i", str(key), "-p", str(server.port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={server.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR", f"root@{LOOPBACK}", *remote]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    return env
