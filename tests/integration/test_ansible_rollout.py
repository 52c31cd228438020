"""ansible/site.yml for real (issue 10, "Done when"): the rollout converges, a second run
changes nothing, every agent's heartbeat reaches the coordinator's store, and a batch
whose health gate fails stops the rollout before the next batch.

The targets are real systemds in `systemd-nspawn --volatile` containers, each in a
network namespace of the test's with its own sshd (tests/integration/_ansible_targets.py):
one coordinator and two agents, rolled out in batches of one. The controller is
`ansible-playbook` run with `ip netns exec` in the namespace that holds the bridge. The
package comes as a wheel of this checkout and a wheelhouse of its dependencies, built on
the controller with `pip wheel`; the roles install it with `--no-index --find-links`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration._ansible_targets import Fleet, Target, ansible_targets

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
AGENTS = ["agent1", "agent2"]
COORDINATOR = "coord"
RUN_TIMEOUT_S = 600
VENV = "/opt/nodewarden"
COORDINATOR_CMD = f"{VENV}/bin/nodewarden-coordinator"
#: a container has no /dev/kmsg of its own, no mail log, and no udev events to watch
AGENT_EXTRA = "[kmsg]\nenabled = false\n\n[udev]\nenabled = false\n\n[logs]\n"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)


@dataclass(frozen=True)
class Run:
    rc: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> ok, changed, unreachable, failed..."""
        tail = self.output[self.output.rindex("PLAY RECAP"):]
        keys = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
        return {m[1]: dict(zip(keys, map(int, m.groups()[1:]), strict=True))
                for m in RECAP.finditer(tail)}


    def changed_tasks(self) -> list[str]:
        """'host: task' for every task or handler that reported a change."""
        out, task = [], ""
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line.split("[", 1)[1].rsplit("]", 1)[0]
            elif line.startswith("changed: ["):
                out.append(f"{line[10:].split(']', 1)[0]}: {task}")
        return out


def build_wheelhouse(work: Path) -> Path:
    """A wheel of this checkout (built from a copy: the shared tree gets no build/) and
    its dependencies' wheels, as a site would prepare them for hosts without network."""
    src, wheels = work / "src", work / "wheelhouse"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"))
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels)]
    subprocess.run([*pip, "--no-deps", str(src)], check=True, capture_output=True)
    [wheel] = wheels.glob("nodewarden-*.whl")
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    return wheels


def write_inventory(fleet: Fleet, path: Path, agent_vars: dict[str, dict[str, Any]]) -> None:
    ssh_args = (f"-o UserKnownHostsFile={fleet.known_hosts} -o GlobalKnownHostsFile=/dev/null"
                " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
    address = {n: {"ansible_host": t.address} for n, t in fleet.targets.items()}
    inventory = {"all": {
        "vars": {"ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
                 "ansible_ssh_private_key_file": str(fleet.key),
                 "ansible_ssh_common_args": ssh_args},
        "children": {
            "nodewarden_coordinators": {
                "hosts": {COORDINATOR: address[COORDINATOR]},
                # a reload of sshd in these containers fails to bind its port again
                # (SIGHUP re-executes it): restarted
                "vars": {"nodewarden_coordinator_cli_link": False,
                         "nodewarden_coordinator_sshd_apply": "restarted",
                         "nodewarden_coordinator_groups": {"mail": {"max_disruptive": 1}}}},
            "nodewarden_agents": {
                "hosts": {a: {**address[a], **agent_vars.get(a, {})} for a in AGENTS},
                # /usr is the host's, read-only, in these containers: no /usr/local/bin link
                "vars": {"nodewarden_agent_cli_link": False, "nodewarden_agent_group": "mail",
                         "nodewarden_agent_role": "mail",
                         "nodewarden_agent_extra_config": AGENT_EXTRA}}}}}
    path.write_text(json.dumps(inventory, indent=1))  # JSON is YAML


def run_playbook(fleet: Fleet, work: Path, inventory: Path, *extra: str,
                 playbook: str = "site.yml") -> Run:
    home = Path(tempfile.mkdtemp(prefix="nwa-", dir="/tmp"))  # short: ssh's ControlPath
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
           "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=20s"}
    env.pop("SSH_AUTH_SOCK", None)
    start = time.monotonic()
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", fleet.net.coordinator, str(PLAYBOOK), "-i", str(inventory),
             playbook, "-e", f"nodewarden_wheelhouse={work / 'wheelhouse'}",
             "-e", '{"nodewarden_serial": [1, 1]}', *extra],
            cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
            check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return Run(done.returncode, done.stdout + done.stderr, time.monotonic() - start)


def coordinator_status(coord: Target) -> dict[str, Any]:
    """`status --json` inside the coordinator's container, as its user (a store opened
    as root would leave root's files in the user's state directory)."""
    user = "nodewarden-coordinator"
    out = coord.check("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                      COORDINATOR_CMD, "--config", "/etc/nodewarden/coordinator.toml",
                      "status", "--json")
    return {h["host"]: h for h in json.loads(out)["status"]}


def invocation(target: Target) -> str:
    return target.check("systemctl", "show", "-p", "InvocationID", "--value",
                        "nodewarden.service").strip()


def test_site_yml_rolls_out_converges_and_stops_at_a_failed_health_gate(
    tmp_path: Path,
) -> None:
    assert PLAYBOOK.exists(), f"{PLAYBOOK} missing: pip install -e '.[test]'"
    assert shutil.which("systemd-nspawn"), "systemd-nspawn missing: systemd-container"
    build_wheelhouse(tmp_path)
    with ansible_targets([COORDINATOR, *AGENTS], tmp_path / "fleet") as fleet:
        inventory = tmp_path / "inventory.json"
        write_inventory(fleet, inventory, {})
        started = time.time()

        first = run_playbook(fleet, tmp_path, inventory)
        print(f"first run: {first.seconds:.1f} s")
        assert first.rc == 0, first.output[-6000:]
        recap = first.recap()
        assert set(recap) == {COORDINATOR, *AGENTS}, first.output[-3000:]
        assert all(r["failed"] == r["unreachable"] == 0 and r["changed"] > 0
                   for r in recap.values()), recap

        second = run_playbook(fleet, tmp_path, inventory)
        print(f"second run: {second.seconds:.1f} s")
        assert second.rc == 0, second.output[-6000:]
        assert {h: r["changed"] for h, r in second.recap().items()} == dict.fromkeys(
            [COORDINATOR, *AGENTS], 0), second.changed_tasks()

        check_fleet(fleet, started)
        check_key_rotation(fleet, tmp_path, inventory)
        check_failed_gate_stops_the_rollout(fleet, tmp_path, inventory)
        check_removal(fleet, tmp_path, inventory)


def check_fleet(fleet: Fleet, started: float) -> None:
    """Every agent heard in the coordinator's store since the rollout began; each joined
    in dry-run with its group and role; its key is a forced command on the coordinator."""
    coord = fleet.targets[COORDINATOR]
    status = coordinator_status(coord)
    assert set(status) == set(AGENTS), status
    for agent in AGENTS:
        seen = status[agent]["last_seen"]
        assert seen is not None and seen >= started, status[agent]
        assert (status[agent]["group"], status[agent]["role"]) == ("mail", "mail")
        config = (fleet.targets[agent].root / "etc/nodewarden/agent.toml").read_text()
        assert 'mode = "dry-run"' in config
    keys = (coord.root / "var/lib/nodewarden-coordinator/.ssh/authorized_keys").read_text()
    assert len(keys.splitlines()) == len(AGENTS)
    assert all(line.startswith('restrict,command="') for line in keys.splitlines())
    for unit in ("nodewarden-coordinator.service", "nodewarden-coordinator-watch.timer"):
        assert coord.check("systemctl", "is-active", unit).strip() == "active"


def check_failed_gate_stops_the_rollout(fleet: Fleet, work: Path, inventory: Path) -> None:
    """agent1, the first batch, gets a configuration `nodewarden check` accepts but that
    points at a port where no coordinator listens: its unit is active and its check
    clean, but no heartbeat comes, so its gate fails. The run changes every agent's
    configuration (heartbeat_s), yet the second batch is never started."""
    later = [fleet.targets[a] for a in AGENTS[1:]]
    before = {t.name: ((t.root / "etc/nodewarden/agent.toml").read_text(), invocation(t))
              for t in later}
    write_inventory(fleet, inventory, {"agent1": {"nodewarden_agent_coordinator_port": 2299}})
    third = run_playbook(fleet, work, inventory, "-e", "nodewarden_agent_heartbeat_s=20",
                         "-e", "nodewarden_agent_gate_timeout_s=20",
                         "-e", "nodewarden_agent_mode=enforce",  # the group moves on
                         "--limit", "nodewarden_agents")  # the coordinator is as it was
    print(f"failing run: {third.seconds:.1f} s")
    assert third.rc != 0, third.output[-6000:]
    recap = third.recap()
    assert recap["agent1"]["failed"] == 1, third.output[-6000:]
    assert "Gate | the coordinator hears this host's heartbeat" in third.output
    assert not set(recap) & {t.name for t in later}, recap  # never started
    broken = (fleet.targets["agent1"].root / "etc/nodewarden/agent.toml").read_text()
    assert "port = 2299" in broken and "heartbeat_s = 20" in broken
    assert 'mode = "enforce"' in broken  # joined before: it takes its group's mode
    for t in later:
        assert ((t.root / "etc/nodewarden/agent.toml").read_text(), invocation(t)) == \
            before[t.name], f"{t.name} was touched"


def check_key_rotation(fleet: Fleet, work: Path, inventory: Path) -> None:
    """A playbook run rotates agent2's key: a new key made on the host, its line on the
    coordinator replaced, the agent heard again with it (the gate passed)."""
    agent = fleet.targets["agent2"]
    pub = agent.root / "etc/nodewarden/coordinator_ed25519.pub"
    old_key = pub.read_text().split()[1]
    run = run_playbook(fleet, work, inventory, "--limit", "agent2",
                       "-e", "nodewarden_agent_rotate_key=true")
    print(f"key rotation run: {run.seconds:.1f} s")
    assert run.rc == 0, run.output[-6000:]
    new_key = pub.read_text().split()[1]
    assert new_key != old_key
    keys = (fleet.targets[COORDINATOR].root /
            "var/lib/nodewarden-coordinator/.ssh/authorized_keys").read_text()
    [line] = [x for x in keys.splitlines() if "--host agent2" in x]
    assert new_key in line and old_key not in keys


def check_removal(fleet: Fleet, work: Path, inventory: Path) -> None:
    """remove.yml takes agent2 out: not in the coordinator's store or authorized_keys,
    its unit stopped and disabled, its key gone. A group as the pattern removes nothing."""
    coord = fleet.targets[COORDINATOR]
    refused = run_playbook(fleet, work, inventory, "-e",
                           "nodewarden_remove_hosts=nodewarden_agents", playbook="remove.yml")
    assert refused.rc != 0 and "one by one" in refused.output, refused.output[-6000:]
    keys = (coord.root / "var/lib/nodewarden-coordinator/.ssh/authorized_keys").read_text()
    assert "--host agent1" in keys and "--host agent2" in keys
    run = run_playbook(fleet, work, inventory, "-e", "nodewarden_remove_hosts=agent2",
                       playbook="remove.yml")
    print(f"removal run: {run.seconds:.1f} s")
    assert run.rc == 0, run.output[-6000:]
    coord, agent = fleet.targets[COORDINATOR], fleet.targets["agent2"]
    assert "agent2" not in coordinator_status(coord)
    keys = (coord.root / "var/lib/nodewarden-coordinator/.ssh/authorized_keys").read_text()
    assert "--host agent2" not in keys and "--host agent1" in keys
    state = agent.run("systemctl", "is-active", "nodewarden.service").stdout.strip()
    assert state in ("inactive", "unknown"), state
    assert not (agent.root / "etc/nodewarden/coordinator_ed25519").exists()
