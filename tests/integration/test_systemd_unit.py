"""The shipped unit: `systemd-analyze verify` is silent, and in a real systemd (an nspawn
container) the agent reaches active via READY=1, publishes its cycle sentence, and a hung
agent is killed and restarted by the watchdog (docs/architecture.md, safety property 9)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration._nspawn_daemon import REPO, booted_container, console_script

pytestmark = pytest.mark.realparts

UNIT = REPO / "systemd" / "nodewarden.service"


def unit_with_real_binary(tmp_path: Path) -> Path:
    """A copy whose ExecStart names the installed script (verify checks that it exists)."""
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/nodewarden run\n" in text
    copy = tmp_path / "nodewarden.service"
    copy.write_text(text.replace("/usr/local/bin/nodewarden", str(console_script())))
    return copy


def verify(unit: Path) -> str:
    cp = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                        text=True, check=False)
    return (cp.stdout + cp.stderr).strip()


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    assert verify(unit_with_real_binary(tmp_path)) == ""


def test_the_verify_check_would_catch_an_unknown_key(tmp_path: Path) -> None:
    """It exits 0 on unknown keys (docs/facts.md): only its output tells."""
    unit = unit_with_real_binary(tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=3\n"))
    assert "WatchdogSecs" in verify(unit)


def test_unit_declares_notify_watchdog_and_limits() -> None:
    keys = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert keys["Type"] == "notify"
    assert keys["NotifyAccess"] == "main"
    assert keys["WatchdogSec"] == "30s"
    assert keys["Restart"] == "on-failure"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["StateDirectory"] == "nodewarden"
    assert keys["MemoryMax"] == "128M"
    assert keys["ConfigurationDirectory"] == "nodewarden"
    # /usr and /boot read-only only: remediations write /etc, /run, call nft, reboot
    assert keys["ProtectSystem"] == "yes"


def test_watchdog_restarts_a_hung_agent_in_a_real_systemd(tmp_path: Path) -> None:
    unit = UNIT.read_text().replace("/usr/local/bin/nodewarden", str(console_script()))
    with booted_container(tmp_path) as c:
        c.write("/etc/systemd/system/nodewarden.service", unit)
        # this checkout's code, whichever checkout `pip install -e` last pointed at
        dropin = f"[Service]\nWatchdogSec=3s\nRestartSec=1s\nEnvironment=PYTHONPATH={REPO}\n"
        if any(str(p).startswith(("/tmp/", "/var/tmp/")) for p in (REPO, console_script())):
            # the checkout (CI clones anywhere) must be visible to the service: the unit's
            # PrivateTmp=yes would hide a checkout under /tmp
            dropin += "PrivateTmp=no\n"
        c.write("/etc/systemd/system/nodewarden.service.d/test.conf", dropin)
        # /dev/kmsg of a container is not the kernel ring: this test is about systemd
        c.write("/etc/nodewarden/agent.toml",
                '[agent]\nstate_dir = "/var/lib/nw-test"\nsample_interval_s = 0.5\n'
                "[kmsg]\nenabled = false\n[udev]\nenabled = false\n"
                '[logs.mail]\npath = "/var/log/mail.log"\n')
        c.run(["systemctl", "daemon-reload"])
        # Type=notify: `start` returns only once READY=1 arrived (or fails)
        start = c.run(["systemctl", "start", "nodewarden.service"], check=False)
        journal = c.run(["journalctl", "-u", "nodewarden", "--no-pager"], check=False).stdout
        assert start.returncode == 0, f"{start.stderr}\n{journal}"
        assert c.run(["systemctl", "is-active", "nodewarden"]).stdout.strip() == "active"
        status = c.show("nodewarden", "StatusText")
        assert re.fullmatch(r"no action: \d+ findings? firing; load1 [\d.]+", status), status
        assert c.show("nodewarden", "NRestarts") == "0"
        first_pid = int(c.show("nodewarden", "MainPID"))
        assert first_pid > 0
        # (not under /tmp or /var/tmp: the unit has PrivateTmp=yes)
        assert ((c.root / "var/lib/nw-test").stat().st_mode & 0o777) == 0o700

        # hang the agent: SIGSTOP freezes the loop, so it stops pinging
        c.run(["kill", f"-{signal.SIGSTOP.value}", str(first_pid)])
        deadline = time.monotonic() + 30
        restarted = False
        while time.monotonic() < deadline:
            n = c.show("nodewarden", "NRestarts")
            pid = c.show("nodewarden", "MainPID")
            if n == "1" and pid not in ("0", str(first_pid)) and c.run(
                    ["systemctl", "is-active", "nodewarden"], check=False
            ).stdout.strip() == "active":
                restarted = True
                break
            time.sleep(0.2)
        journal = c.run(["journalctl", "-u", "nodewarden", "--no-pager"], check=False).stdout
        assert restarted, journal
        assert "Watchdog timeout" in journal
        assert "Failed with result 'watchdog'" in journal
        assert int(c.show("nodewarden", "MainPID")) != first_pid
        c.run(["systemctl", "stop", "nodewarden"])
        assert c.show("nodewarden", "Result") == "success"
