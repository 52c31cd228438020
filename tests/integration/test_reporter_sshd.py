"""The agent's reporter against the real coordinator behind a real sshd: every message
reaches the store exactly once and in order, through an sshd that goes away and comes
back, an agent SIGKILLed mid-send, a session cut mid-stream; a changed host key is
refused, reported, and nothing is sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from agent.report.reporter import Reporter
from agent.report.settings import ReporterSettings
from agent.report.spool import Spool
from tests.integration._coordinator import Coordinator, make_coordinator
from tests.integration._sshd import Sshd, keypair, running_sshd
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts

HOSTS = ["mx1", "mx2", "mx3", "mx4", "mx5"]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Coordinator:
    return make_coordinator(tmp_path_factory.mktemp("coordinator"), HOSTS)


def settings(server: Sshd, key: Path, **over: object) -> ReporterSettings:
    base = ReporterSettings(host="127.0.0.1", port=server.port, user="root", key_file=key,
                            known_hosts=server.known_hosts, reply_timeout_s=10.0,
                            backoff_max_s=0.5, connect_timeout_s=5.0)
    return ReporterSettings(**{**asdict(base), **over})


def findings(coordinator: Coordinator, host: str) -> list[int]:
    return [json.loads(m[4])["n"] for m in coordinator.messages(host) if m[2] == "finding"]


@pytest.fixture
def reporter_factory(tmp_path: Path) -> Iterator[list[Reporter]]:
    made: list[Reporter] = []
    yield made
    for r in made:
        r.stop()


def test_every_message_arrives_once_in_order(coordinator: Coordinator, tmp_path: Path,
                                             reporter_factory: list[Reporter]) -> None:
    with running_sshd(coordinator.authorized_keys) as server:
        r = Reporter(settings(server, coordinator.keys["mx1"]), Spool(tmp_path / "spool"),
                     {"version": "test"})
        reporter_factory.append(r)
        r.start()
        for n in range(300):
            r.send("finding", {"problem": "test", "subject": "x", "n": n})
        assert poll(lambda: r.status().spool.depth == 0 or None, 60)
        assert findings(coordinator, "mx1") == list(range(300))
        status = r.status()
        assert status.connected and status.last_ack is not None and status.sessions == 1


def test_sshd_away_and_back_loses_and_duplicates_nothing(
        coordinator: Coordinator, tmp_path: Path, reporter_factory: list[Reporter]) -> None:
    host_key = tmp_path / "host_key"
    with running_sshd(coordinator.authorized_keys, host_key=host_key) as server:
        port = server.port
        pinned = tmp_path / "known_hosts"  # the agent's copy outlives this sshd's dir
        pinned.write_bytes(server.known_hosts.read_bytes())
        r = Reporter(settings(server, coordinator.keys["mx2"], known_hosts=pinned),
                     Spool(tmp_path / "spool"), {"version": "test"})
        reporter_factory.append(r)
        r.start()
        for n in range(50):
            r.send("finding", {"problem": "test", "subject": "x", "n": n})
        assert poll(lambda: r.status().spool.depth == 0 or None, 60)
    # sshd is gone: messages wait in the spool
    for n in range(50, 120):
        r.send("finding", {"problem": "test", "subject": "x", "n": n})
    assert poll(lambda: (not r.status().connected) or None, 30)
    assert r.status().spool.depth == 70 and r.status().last_error
    with running_sshd(coordinator.authorized_keys, host_key=host_key, port=port):
        assert poll(lambda: r.status().spool.depth == 0 or None, 60)
    assert findings(coordinator, "mx2") == list(range(120))


def test_an_agent_killed_mid_send_resends_without_duplicates(
        coordinator: Coordinator, tmp_path: Path) -> None:
    with running_sshd(coordinator.authorized_keys) as server:
        config = tmp_path / "settings.json"
        raw = asdict(settings(server, coordinator.keys["mx3"], window=4))
        config.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                      for k, v in raw.items()}))
        argv = [sys.executable, "-m", "tests.integration._reporter_proc", str(config),
                str(tmp_path / "spool")]
        proc = subprocess.Popen([*argv, "1500"], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[2])
        try:
            assert poll(lambda: len(findings(coordinator, "mx3")) >= 100 or None, 60)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(30)
        sent = findings(coordinator, "mx3")
        assert 100 <= len(sent) < 1500  # killed mid-send
        again = subprocess.run([*argv, "0"], capture_output=True, text=True, timeout=120,
                               cwd=Path(__file__).resolve().parents[2], check=False)
        assert "drained" in again.stdout, again.stderr
    assert findings(coordinator, "mx3") == list(range(1500))


def test_a_session_cut_mid_stream_is_resumed(coordinator: Coordinator, tmp_path: Path,
                                             reporter_factory: list[Reporter]) -> None:
    with running_sshd(coordinator.authorized_keys) as server:
        r = Reporter(settings(server, coordinator.keys["mx4"], window=2),
                     Spool(tmp_path / "spool"), {"version": "test"})
        reporter_factory.append(r)
        for n in range(600):
            r.send("finding", {"problem": "test", "subject": "x", "n": n})
        r.start()
        assert poll(lambda: len(findings(coordinator, "mx4")) >= 50 or None, 60)
        # the coordinator's side of the session dies (as when its process is killed)
        subprocess.run(["pkill", "-KILL", "-f", "session --host mx4"], check=False)
        assert poll(lambda: r.status().spool.depth == 0 or None, 60)
        assert r.status().sessions >= 2
    assert findings(coordinator, "mx4") == list(range(600))


def test_a_changed_host_key_is_refused_and_nothing_is_sent(
        coordinator: Coordinator, tmp_path: Path, reporter_factory: list[Reporter]) -> None:
    with running_sshd(coordinator.authorized_keys) as server:
        impostor = keypair(tmp_path / "impostor")
        pinned = tmp_path / "known_hosts"
        pinned.write_text(f"[127.0.0.1]:{server.port} {' '.join(impostor.split()[:2])}\n")
        r = Reporter(settings(server, coordinator.keys["mx5"], known_hosts=pinned),
                     Spool(tmp_path / "spool"), {"version": "test"})
        reporter_factory.append(r)
        r.send("finding", {"problem": "test", "subject": "x", "n": 0})
        r.start()
        assert poll(lambda: "CHANGED" in r.status().last_error or None, 30)
        assert not r.status().connected and r.status().spool.depth == 1
    assert coordinator.messages("mx5") == []
