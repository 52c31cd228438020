"""A fleet in network namespaces the test creates: a coordinator namespace with a bridge,
one namespace per host joined to it by a veth pair, and what runs in them.

    with fleet_namespaces(["mx1", "mx2"]) as net:   # net.coordinator, net.ns["mx1"]
        ...

Nothing touches the root namespace: the bridge and one end of each veth pair live in
the coordinator's namespace, the other end in the host's. Every namespace is deleted on
exit, whatever happened (the processes inside must have been stopped first: the
callers' ExitStack closes them before it leaves this). The addresses are in
tests/integration/_netns.py's TEST_NET_PREFIX, never on the machine's network.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.integration._agent import Agent, write_config
from tests.integration._coordinator import COORDINATOR, Coordinator, coordinator_toml
from tests.integration._fuse import unmount
from tests.integration._netns import TEST_NET_PREFIX, ip
from tests.integration._sshd import Sshd, keypair

REPO = Path(__file__).parents[2]
#: sshd's port in the coordinator's namespace (a fresh namespace: nothing else is there)
SSH_PORT = 2222
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FleetNet:
    coordinator: str
    #: the coordinator's address on the bridge
    address: str
    #: host name -> its namespace, and its address
    ns: Mapping[str, str]
    addresses: Mapping[str, str]


@contextlib.contextmanager
def fleet_namespaces(hosts: list[str], prefix: str = "nwf") -> Iterator[FleetNet]:
    tag = f"{prefix}{os.getpid() % 100000}"
    net = f"{TEST_NET_PREFIX}{os.getpid() % 250}"
    coordinator = f"{tag}c"
    names = {host: f"{tag}h{i}" for i, host in enumerate(hosts, 1)}
    made: list[str] = []
    try:
        for ns in (coordinator, *names.values()):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", coordinator, "link", "add", "br0", "type", "bridge")
        ip("-n", coordinator, "addr", "add", f"{net}.1/24", "dev", "br0")
        ip("-n", coordinator, "link", "set", "br0", "up")
        addresses = {}
        for i, (host, ns) in enumerate(names.items(), 1):
            port = f"p{i}"
            ip("-n", coordinator, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("-n", coordinator, "link", "set", port, "master", "br0")
            ip("-n", coordinator, "link", "set", port, "up")
            addresses[host] = f"{net}.{10 + i}"
            ip("-n", ns, "addr", "add", f"{addresses[host]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        yield FleetNet(coordinator, f"{net}.1", names, addresses)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def coordinator_cli(net: FleetNet, config: Path, *args: str
                    ) -> subprocess.CompletedProcess[str]:
    """An operator command, run on the coordinator's host (its namespace)."""
    return subprocess.run(in_ns(net.coordinator, COORDINATOR, "--config", str(config),
                                *args), capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)


def cli_json(net: FleetNet, config: Path, command: str) -> list[dict[str, object]]:
    done = coordinator_cli(net, config, command, "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)[command]
    return rows


@dataclass(frozen=True)
class Webhook:
    url: str
    received: Path

    def alerts(self) -> list[dict[str, object]]:
        if not self.received.exists():
            return []
        return [json.loads(line) for line in self.received.read_text().splitlines()]


@contextlib.contextmanager
def webhook_receiver(ns: str, received: Path) -> Iterator[Webhook]:
    """The pager a person carries: an HTTP receiver on the namespace's loopback."""
    proc = subprocess.Popen(in_ns(ns, sys.executable, "-m", "tests.integration._fleet_procs",
                                  "webhook", str(received)),
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[:1] == ["ready"], f"the webhook receiver did not start: {ready}"
        yield Webhook(f"http://127.0.0.1:{ready[1]}/alert", received)
    finally:
        proc.kill()
        proc.wait()


def fleet_coordinator(work: Path, hosts: Mapping[str, tuple[str, str]], webhook: str
                      ) -> Coordinator:
    """The coordinator's configuration and store, and each host's key added with the real
    `keys add` (`hosts`: name -> (group, role)). Per-process sessions; the mail group
    never storms (every simulated host shares this one machine's metrics, so a
    machine-wide symptom would look like a storm of the whole group); alerts go to the
    webhook."""
    work.mkdir(parents=True, exist_ok=True)
    authorized = work / "ssh" / "authorized_keys"
    config = work / "coordinator.toml"
    config.write_text(f"""
[store]
url = "sqlite:///{work / 'fleet.db'}"
[ssh]
authorized_keys = "{authorized}"
command = "{COORDINATOR}"
[serve]
socket = ""
[notifiers.pager]
kind = "webhook"
url = "{webhook}"
timeout_s = 10
[groups.mail]
max_disruptive = 2
storm_percent = 100
contacts = ["pager"]
[groups.storage]
max_disruptive = 1
contacts = ["pager"]
""")
    keys = {}
    for host, (group, role) in hosts.items():
        keys[host] = work / f"{host}_key"
        keypair(keys[host])
        done = subprocess.run([COORDINATOR, "--config", str(config), "keys", "add", host,
                               f"{keys[host]}.pub", "--group", group, "--role", role],
                              capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        assert done.returncode == 0, done.stderr
    return Coordinator(config, work / "fleet.db", authorized, keys)


@dataclass(frozen=True)
class KernelLogs:
    """One kernel ring per host (tests/integration/_kmsgdev.py)."""

    mount: Path
    proc: subprocess.Popen[str]

    def device(self, host: str) -> Path:
        return self.mount / host

    def emit(self, host: str, text: str) -> None:
        """The host's kernel prints `text` (pr_notice, facility 0)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"name": host, "text": text}) + "\n")
        self.proc.stdin.flush()
        said = self.proc.stdout.readline()
        assert said.startswith(f"emitted {host} "), said


@contextlib.contextmanager
def kernel_logs(mount: Path, hosts: list[str]) -> Iterator[KernelLogs]:
    mount.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration._kmsgdev", str(mount),
                             *hosts], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "the kernel log device did not start"
        yield KernelLogs(mount, proc)
    finally:
        proc.kill()  # closes /dev/fuse: the connection is aborted
        proc.wait()
        unmount(mount)


def start_agent(work: Path, host: str, role: str, net: FleetNet, sshd: Sshd,
                coordinator: Coordinator, logs: KernelLogs) -> Agent:
    """A real `nodewarden run` in the host's namespace: its own state dir, host name,
    kernel log and key, the coordinator's host key pinned in its own known_hosts. Its
    pages are enforced, as a fleet's are (the site's paging command here is /bin/true);
    every other action stays in the default dry-run."""
    home = work / host
    home.mkdir(parents=True)
    known = home / "known_hosts"
    known.write_bytes(sshd.known_hosts.read_bytes())
    mail = home / "mail.log"
    mail.write_text("")
    config = home / "agent.toml"
    write_config(config, home / "state", mail, role=role, kmsg_path=logs.device(host),
                 hostname=host, extra=coordinator_toml(
                     sshd.address, sshd.port, coordinator.keys[host], known,
                     backoff_max_s=1) + """[guards.mode]
page = "enforce"
[actions.page]
command = ["/bin/true", "{problem}", "{subject}"]
""")
    return Agent(home, config, home / "state", netns=net.ns[host])


def ask_lease(net: FleetNet, host: str, agent: Agent, action: str, subject: str,
              problem: str) -> dict[str, object]:
    """`host` asks for a disruptive lease through the agent's lease gate, from its own
    namespace with its own key (tests/integration/_fleet_procs.py `lease`)."""
    spool = agent.workdir / f"lease-spool-{action}"
    done = subprocess.run(in_ns(net.ns[host], sys.executable, "-m",
                                "tests.integration._fleet_procs", "lease",
                                str(agent.config), str(spool), action, subject, problem),
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return answer
