"""The shipped units in a real systemd (a `systemd-nspawn --volatile` container booting this
machine's /usr, tests/integration/_nspawn_daemon.py): the agent is active only once it
said READY=1, `systemctl reload` applies a good configuration and keeps the running one
on a bad one; the coordinator's serve runs as its own user with its socket in its
runtime directory, and the timer fires `watch`. (The watchdog restarting a frozen agent:
test_systemd_unit.py.) No part may be missing: a machine without systemd-nspawn fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration._nspawn_daemon import Container, booted_container
from tests.integration._units import (
    AGENT,
    SERVE,
    TIMER,
    USER,
    WATCH,
    add_coordinator_user,
    as_coordinator,
    install,
    journal,
    wait_for,
)

pytestmark = pytest.mark.realparts

#: the agent in a container: no kernel log or udev of its own (this is about systemd)
AGENT_TOML = ('[agent]\nstate_dir = "/var/lib/nodewarden"\nsample_interval_s = 0.5\n'
              "[kmsg]\nenabled = false\n[udev]\nenabled = false\n"
              '[logs.mail]\npath = "/var/log/mail.log"\n')
FIFO = "/run/nw-agent.toml"
SOCKET = f"/run/{USER}/serve.sock"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcJ1MIYyWt4W0S7ZTBPrsuGkLx8C4c1YA7tB0xQv2Q+"


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    with booted_container(tmp_path) as c:
        yield c


def state(c: Container, unit: str) -> str:
    return c.show(unit, "ActiveState")


def main_pid(c: Container, unit: str) -> str:
    """The unit's main process, as the container numbers it ("" before it has one)."""
    pid = c.show(unit, "MainPID")
    return "" if pid == "0" else pid


def blocked_in_fifo_open(c: Container, pid: str) -> bool:
    """The process waits in open(2) for the FIFO's writer (the kernel's wait_for_partner)."""
    return c.run(["cat", f"/proc/{pid}/wchan"], check=False).stdout == "wait_for_partner"


def test_agent_is_active_only_after_ready(container: Container) -> None:
    """The agent's configuration is a FIFO, so its start-up stops in open(2), before
    READY=1, until the test writes the configuration: meanwhile the unit is activating
    and `systemctl start` has not returned; once written, READY=1 makes it active."""
    c = container
    install(c, AGENT, extra=f"[Service]\nEnvironment=NODEWARDEN_CONFIG={FIFO}\n")
    c.run(["mkfifo", "-m", "0600", FIFO])
    start = subprocess.Popen(["nsenter", "-t", str(c.pid), "-a", "systemctl", "start", AGENT],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid = wait_for(lambda: main_pid(c, AGENT) or None, 30, lambda: journal(c, AGENT))
        wait_for(lambda: blocked_in_fifo_open(c, pid) or None, 30,
                 lambda: f"agent not waiting in open(): {journal(c, AGENT)}")
        assert state(c, AGENT) == "activating"
        assert c.show(AGENT, "SubState") == "start"
        assert start.poll() is None, "systemctl start returned before READY=1"
        # the writer: the agent reads the configuration, starts up and says READY=1
        with (c.root / FIFO.lstrip("/")).open("w") as fifo:
            fifo.write(AGENT_TOML)
        out, _ = start.communicate(timeout=90)
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
    assert start.returncode == 0, f"{out}\n{journal(c, AGENT)}"
    assert state(c, AGENT) == "active"
    assert c.show(AGENT, "StatusText").startswith("no action:"), journal(c, AGENT)
    assert main_pid(c, AGENT) == pid  # the same process, not a restart


def reload_and_wait(c: Container, marker: str) -> str:
    """`systemctl reload`, then the journal once it says `marker` one time more."""
    before = journal(c, AGENT).count(marker)
    c.run(["systemctl", "reload", AGENT])
    return wait_for(lambda: ((j := journal(c, AGENT)).count(marker) > before and j) or None,
                    30, lambda: f"no {marker!r} after reload:\n{journal(c, AGENT)}")


def last_line(text: str, marker: str) -> str:
    return [line for line in text.splitlines() if marker in line][-1]


def test_reload_applies_a_good_configuration_and_keeps_it_on_a_bad_one(
        container: Container) -> None:
    c = container
    install(c, AGENT)
    c.write("/etc/nodewarden/agent.toml", AGENT_TOML)
    c.run(["systemctl", "start", AGENT])
    pid = c.show(AGENT, "MainPID")
    # good: one more log file to follow
    c.write("/etc/nodewarden/agent.toml",
            AGENT_TOML + '[logs.extra]\npath = "/var/log/extra.log"\n')
    text = reload_and_wait(c, "reloaded ")
    assert "log:extra: will follow /var/log/extra.log" in last_line(text, "reloaded "), text
    # bad: an unknown key; the agent says why and keeps running the good one
    c.write("/etc/nodewarden/agent.toml", AGENT_TOML + "[logs.extra]\npaht = \"/x\"\n")
    text = reload_and_wait(c, "still running the previous one")
    refused = [line for line in text.splitlines() if "reload refused:" in line]
    assert any("paht" in line for line in refused), text
    wait_for(lambda: state(c, AGENT) == "active" or None, 30, lambda: journal(c, AGENT))
    assert c.show(AGENT, "MainPID") == pid
    assert c.show(AGENT, "NRestarts") == "0"
    # the good one still runs: the same file again changes no source
    c.write("/etc/nodewarden/agent.toml",
            AGENT_TOML + '[logs.extra]\npath = "/var/log/extra.log"\n')
    text = reload_and_wait(c, "reloaded ")
    assert "log:" not in last_line(text, "reloaded "), text
    c.run(["systemctl", "stop", AGENT])
    assert c.show(AGENT, "Result") == "success"


def coordinator_ready(c: Container, toml: str) -> int:
    """The user, the configuration, serve started and READY=1; the user's uid."""
    uid = add_coordinator_user(c)
    c.write("/etc/nodewarden/coordinator.toml", toml)
    install(c, SERVE)
    start = c.run(["systemctl", "start", SERVE], check=False)
    assert start.returncode == 0, f"{start.stderr}\n{journal(c, SERVE)}"
    return uid


def test_serve_runs_as_its_user_with_the_socket_in_its_runtime_directory(
        container: Container) -> None:
    c = container
    uid = coordinator_ready(c, "[watch]\nsilent_after_s = 90\n")
    assert state(c, SERVE) == "active"
    assert c.show(SERVE, "StatusText") == f"serving at {SOCKET}"  # sent with READY=1
    owner = c.run(["stat", "-c", "%u", f"/proc/{main_pid(c, SERVE)}"]).stdout
    assert int(owner) == uid
    sock = os.stat(c.root / SOCKET.lstrip("/"))
    rundir = os.stat((c.root / SOCKET.lstrip("/")).parent)
    assert (sock.st_uid, sock.st_mode & 0o777) == (uid, 0o600)
    assert (rundir.st_uid, rundir.st_mode & 0o777) == (uid, 0o700)
    state_dir = os.stat(c.root / f"var/lib/{USER}")
    assert (state_dir.st_uid, state_dir.st_mode & 0o777) == (uid, 0o700)
    # an operator's keys add, and sshd's forced command: as the user, outside the unit
    added = as_coordinator(c, "keys", "add", "mx1", PUBKEY, "--group", "mail")
    assert added.returncode == 0, added.stderr
    session = as_coordinator(c, "session", "--host", "mx1")  # reaches serve: EOF, done
    assert session.returncode == 0, f"{session.stdout}{session.stderr}\n{journal(c, SERVE)}"
    # serve stopped: its runtime directory is gone, a session says so and ends with 3
    c.run(["systemctl", "stop", SERVE])
    assert c.show(SERVE, "Result") == "success"
    assert not (c.root / SOCKET.lstrip("/")).parent.exists()
    away = as_coordinator(c, "session", "--host", "mx1")
    assert away.returncode == 3, f"{away.stdout}{away.stderr}"
    assert "cannot reach serve" in away.stderr


def test_the_timer_fires_watch(container: Container) -> None:
    """A host added and never heard from is silent after 1 s: the timer's rounds (every
    2 s in this test's drop-in) say so in the watch unit's journal and raise its alert in
    the store. The test never starts the watch service itself."""
    c = container
    coordinator_ready(c, "[watch]\nsilent_after_s = 1\n")
    added = as_coordinator(c, "keys", "add", "mx1", PUBKEY, "--group", "mail")
    assert added.returncode == 0, added.stderr
    install(c, WATCH)
    install(c, TIMER, extra="[Timer]\nOnBootSec=\nOnUnitActiveSec=\nOnActiveSec=1s\n"
            "OnUnitActiveSec=2s\nAccuracySec=100ms\n")
    c.run(["systemctl", "start", TIMER])
    line = "silent: mx1 (group mail)"
    wait_for(lambda: journal(c, WATCH).count(line) >= 2 or None, 60,
             lambda: f"{journal(c, WATCH)}\n{journal(c, TIMER)}")
    assert c.show(TIMER, "LastTriggerUSec") not in ("", "n/a", "0")
    alerts = as_coordinator(c, "alerts", "--json")
    assert alerts.returncode == 0, alerts.stderr
    assert '"kind": "silent"' in alerts.stdout and '"scope": "mx1"' in alerts.stdout
    # the round runs as the coordinator's user, in its own unit
    assert c.show(WATCH, "User") == USER
    c.run(["systemctl", "stop", TIMER, SERVE])
