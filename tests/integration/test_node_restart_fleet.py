"""Incident 000's node-restart ladder, granted by the coordinator and given back after a real
reboot (issue 9, "Done when": "a node-restart ladder of incident 000 now climbs to a
granted node restart (in an nspawn container) and the lease is released after boot").

The node is a real systemd booted in a `systemd-nspawn --volatile` container, joined to a
network namespace the test made; the coordinator is a real OpenSSH sshd in the peer
namespace whose forced command is the real `nodewarden-coordinator session`. In the
container the shipped unit runs the real `nodewarden run` (storage role, enforce mode),
started by the container's systemd at boot, reporting to that coordinator.

What the node senses (docs/architecture.md "Sources"):

* its kernel log: a container has no /dev/kmsg of its own (systemd-nspawn hides it), and
  a line written to the host's /dev/kmsg from userspace comes with facility 1, untrusted
  by design, so it could never make the agent act. Each boot of the node gets a kernel
  ring of its own (tests/integration/_kmsgdev.py, a FUSE file that reads like /dev/kmsg,
  bound over the container's /dev/kmsg): the agent reads it with its production code at
  its default path, and the test has its kernel print the hung nfsd line of incident 000
  (facility 0);
* its load and blocked tasks, read from the real /proc: the test's configuration lowers
  the levels of the shipped load-high and blocked-high rules to what this shared 2-core
  machine reads anyway, instead of loading it for minutes. The shipped storage-hang rule
  (all three) and its shipped ladder are unchanged; the hung nfsd's own ladder is pointed
  elsewhere, so that the storage-hang ladder acts alone (otherwise it waits out the
  other's NFS restart: 300 s).

Then: the ladder restarts the NFS server (masked on this node: the restart fails and the
ladder climbs at once), asks for a node-restart lease (the lease gate, through the reporter),
gets it, writes the intent with the lease and reboots the node: systemd-nspawn exits
with 133. The test starts the container again with the same state directory (the node
coming back, with a new boot id and an empty kernel ring); the agent starts at boot,
reconciles the intent and gives the lease back through its spool. The coordinator's store
shows the lease granted to that host and released before its TTL ran out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.store import Lease, SqliteStore
from tests.integration._coordinator import Coordinator, make_coordinator
from tests.integration._fleet import KernelLogs, kernel_logs
from tests.integration._netns import NetnsPair, netns_pair
from tests.integration._nspawn import (
    KERNEL_ARGS,
    REPO,
    _wait_booted,
    _wait_leader,
    python_binds,
    stop,
)
from tests.integration._nspawn_daemon import console_script
from tests.integration._sshd import Sshd, running_sshd
from tests.integration._units import sandbox_dropin
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts

HOST = "nas1"
#: the rest of the storage group: one host of four with a critical finding is no storm
PEERS = ["nas2", "nas3", "nas4"]
SSH_PORT = 2222
#: the container's paths of what the test binds in
STATE = "/var/lib/nodewarden"
ETC = "/etc/nodewarden"
BOOT_DEADLINE_S = 90.0
DEADLINE_S = 60.0
HUNG_NFSD = "INFO: task nfsd:4242 blocked for more than 120 seconds."
#: the container exits with this when its systemd reboots (systemd-nspawn(1))
REBOOTED = 133


def agent_toml(sshd: Sshd) -> str:
    return f"""
[agent]
hostname = "{HOST}"
role = "storage"
mode = "enforce"
state_dir = "{STATE}"
sample_interval_s = 0.5

[udev]
enabled = false

[logs]

# incident 000's storage-hang is all of load-high, blocked-high and a hung task; the
# metric parts at levels this machine's real readings meet (see the module docstring)
[rules.load-high]
kind = "threshold"
metric = "load1_per_cpu"
op = ">="
level = 0.0
subject = "host"

[rules.blocked-high]
kind = "threshold"
metric = "procs_blocked"
op = ">="
level = 0
subject = "{{blocked_task}}"

# the hung nfsd's own ladder acts on other tasks here: storage-hang's ladder acts alone
[policy.hung-task]
subjects = ["jbd2*"]
rungs = [{{ action = "page", subject = "{{problem}} {{subject}} on {{host}}", verify_s = 0 }}]

[coordinator]
host = "{sshd.address}"
port = {sshd.port}
user = "root"
key_file = "{ETC}/{HOST}_key"
known_hosts = "{ETC}/known_hosts"
heartbeat_s = 1
backoff_max_s = 1
lease_timeout_s = 20
"""


@dataclass(frozen=True)
class Node:
    """What the node keeps across its boots, on the test's side of the binds."""

    etc: Path
    units: Path
    state: Path

    def binds(self, kmsg: Path) -> list[str]:
        return [f"--bind-ro={self.etc}:{ETC}", f"--bind-ro={self.units}:/etc/systemd/system",
                f"--bind={self.state}:{STATE}", f"--bind-ro={kmsg}:/dev/kmsg"]

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        if not path.exists():
            return []
        data = path.read_bytes()  # up to its last newline: a record may be half-written
        return [json.loads(x) for x in data[: data.rfind(b"\n") + 1].decode().splitlines()]

    def intents(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.state / "intents").glob("*.json"))]


def make_node(work: Path, sshd: Sshd, coordinator: Coordinator) -> Node:
    """The agent's configuration, key and pinned host key; the shipped unit, started at
    boot (basic.target: the container boots no further) with this checkout's code; the
    NFS server's unit masked."""
    node = Node(work / "etc", work / "units", work / "state")
    for d in (node.etc, node.units / "basic.target.wants", node.units / "nodewarden.service.d",
              node.state):
        d.mkdir(parents=True)
    (node.etc / "agent.toml").write_text(agent_toml(sshd))
    shutil.copy(coordinator.keys[HOST], node.etc / f"{HOST}_key")
    shutil.copy(sshd.known_hosts, node.etc / "known_hosts")
    unit = (REPO / "systemd" / "nodewarden.service").read_text()
    assert "ExecStart=/usr/local/bin/nodewarden run\n" in unit
    (node.units / "nodewarden.service").write_text(
        unit.replace("/usr/local/bin/nodewarden", str(console_script())))
    # the unit's sandbox must see this checkout and this Python (a clone under /tmp too)
    (node.units / "nodewarden.service.d" / "test.conf").write_text(sandbox_dropin())
    (node.units / "basic.target.wants" / "nodewarden.service").symlink_to(
        "/etc/systemd/system/nodewarden.service")
    # whatever this machine has installed: the ladder's first rung fails, it climbs at once
    (node.units / "nfs-server.service").symlink_to("/dev/null")
    return node


@dataclass
class Boot:
    proc: subprocess.Popen[bytes]
    leader: int
    console: Path

    def run(self, *argv: str) -> str:
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *argv],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout

    def journal(self) -> str:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            return self.run("journalctl", "-u", "nodewarden", "--no-pager", "-n", "200")
        return "(no journal: the container is gone)"


@contextlib.contextmanager
def booted(name: str, net: NetnsPair, node: Node, kmsg: Path, console: Path
           ) -> Iterator[Boot]:
    """One boot of the node, in the client namespace; powered off (then killed) on exit
    unless it has ended by itself."""
    argv = ["systemd-nspawn", "-D", "/", "--volatile=yes", "--boot", "--register=no",
            "--keep-unit", f"--network-namespace-path=/run/netns/{net.client}",
            "--console=pipe", "--quiet", f"--machine={name}", *python_binds(),
            *node.binds(kmsg), "--", *KERNEL_ARGS]
    with console.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + BOOT_DEADLINE_S
        leader = _wait_leader(proc, deadline)
        try:
            _wait_booted(leader, proc, deadline)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{exc}\n{console.read_text(errors='replace')[-3000:]}") from exc
        yield Boot(proc, leader, console)
    finally:
        stop(proc)


def store_leases(coordinator: Coordinator) -> list[Lease]:
    store = SqliteStore(coordinator.store)
    try:
        return store.run(lambda tx: tx.leases("storage"))
    finally:
        store.close()


def kinds(coordinator: Coordinator) -> list[str]:
    return [m[2] for m in coordinator.messages(HOST)]


@contextlib.contextmanager
def fleet(tmp_path: Path) -> Iterator[tuple[NetnsPair, Coordinator, Sshd, KernelLogs]]:
    """The namespaces, the coordinator behind sshd, and a kernel ring for each boot."""
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(netns_pair("nwr"))
        coordinator = make_coordinator(tmp_path / "coordinator", [HOST, *PEERS],
                                       group="storage", max_disruptive=1)
        sshd = stack.enter_context(running_sshd(
            coordinator.authorized_keys, netns=net.server, address=net.server_addr,
            port=SSH_PORT))
        logs = stack.enter_context(kernel_logs(tmp_path / "kmsg", ["boot1", "boot2"]))
        yield net, coordinator, sshd, logs


def test_a_granted_node_restart_reboots_the_node_and_its_lease_is_given_back_after_boot(
    tmp_path: Path,
) -> None:
    name = f"nwr{os.getpid() % 100000}"
    with fleet(tmp_path) as (net, coordinator, sshd, logs):
        node = make_node(tmp_path / "node", sshd, coordinator)
        where = f"{sshd.address}:{sshd.port}"

        # ---- the first boot: the ladder climbs to a granted node restart, and reboots
        with booted(name, net, node, logs.device("boot1"), tmp_path / "console1.log") as boot:
            first_boot = boot.run("cat", "/proc/sys/kernel/random/boot_id").strip()
            assert poll(lambda: "hello" in kinds(coordinator) or None, DEADLINE_S), (
                boot.journal())
            assert store_leases(coordinator) == []
            logs.emit("boot1", HUNG_NFSD)
            try:
                code = boot.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the node did not reboot:\n{boot.journal()}\n{node.audit()}")
            assert code == REBOOTED, boot.console.read_text(errors="replace")[-3000:]

        [granted] = store_leases(coordinator)
        assert (granted.host, granted.action, granted.subject) == (HOST, "node-restart", HOST)
        assert granted.released is None  # held through the reboot
        records = node.audit()
        verdict = next(r for r in records if r["kind"] == "verdict"
                       and r["action"] == "node-restart" and r["guard"] == "lease")
        assert verdict["allow"] and f"lease {granted.id} until" in verdict["reason"]
        plan = next(r for r in records if r["kind"] == "plan" and r["action"] == "node-restart")
        assert plan["execute"] is True and plan["problem"] == "storage-hang"
        assert f"--lease={granted.id}" in plan["steps"][0]  # the intent step carries it
        [intent] = node.intents()
        assert intent["completed_at"] is None and intent["boot_id"] == first_boot
        assert (intent["lease"], intent["coordinator"]) == (str(granted.id), where)

        # ---- the node comes back: the same state directory, a new boot, a new ring
        with booted(name, net, node, logs.device("boot2"), tmp_path / "console2.log") as boot:
            assert boot.run("cat", "/proc/sys/kernel/random/boot_id").strip() != first_boot

            def released() -> Lease | None:
                [lease] = store_leases(coordinator)
                return lease if lease.released is not None else None

            lease = poll(released, DEADLINE_S)
            assert lease is not None, f"{boot.journal()}\n{node.audit()}"
            assert lease.id == granted.id and lease.released is not None
            assert lease.granted < lease.released < lease.expires  # before its TTL ran out
            assert "lease-release" in kinds(coordinator)

        records = node.audit()
        outcome = next(r for r in records if r["kind"] == "outcome"
                       and r.get("intent") == intent["id"])
        assert outcome["ok"] is True and outcome["detail"].endswith(": rebooted")
        note = next(r for r in records if r["kind"] == "note"
                    and r.get("lease") == str(granted.id))
        assert note["released"] is True and note["intent"] == intent["id"]
        assert f"given back to the coordinator at {where}" in note["text"]
        assert records.index(outcome) < records.index(note)
        [done] = node.intents()
        assert done["outcome"] == "rebooted" and done["lease_outcome"] == f"given back to {where}"
