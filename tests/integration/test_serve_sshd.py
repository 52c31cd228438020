"""Thin sessions and `serve` behind a real sshd: what stays behind each agent's SSH
session is a shell waiting on serve, not a Python process; a session says clearly when
serve is not there; serve SIGKILLed while agents stream loses and duplicates nothing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest

from agent.report.reporter import Reporter
from agent.report.settings import ReporterSettings
from agent.report.spool import Spool
from tests.integration._coordinator import Coordinator, make_coordinator
from tests.integration._serve import running_serve
from tests.integration._sshd import Sshd, environment, running_sshd, ssh_command
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts

REPO = Path(__file__).resolve().parents[2]


def coordinator(work: Path, hosts: list[str]) -> tuple[Coordinator, Path]:
    sock = work / "run" / "serve.sock"
    return make_coordinator(work, hosts, serve_socket=str(sock)), sock


def settings(server: Sshd, key: Path, **over: object) -> ReporterSettings:
    base = ReporterSettings(host="127.0.0.1", port=server.port, user="root", key_file=key,
                            known_hosts=server.known_hosts, reply_timeout_s=10.0,
                            backoff_max_s=0.5, connect_timeout_s=5.0)
    return ReporterSettings(**{**asdict(base), **over})


def findings(c: Coordinator, host: str) -> list[int]:
    return [json.loads(m[4])["n"] for m in c.messages(host) if m[2] == "finding"]


def sessions_behind(sshd_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(sshd_pid).children(recursive=True)
            if not p.name().startswith("sshd")]


def test_what_stays_behind_a_session_is_a_shell_and_every_message_arrives_once(
        tmp_path: Path) -> None:
    c, sock = coordinator(tmp_path / "c", ["mx1"])
    with running_sshd(c.authorized_keys) as server, \
            running_serve(c.config, sock, tmp_path / "serve.log") as serve:
        r = Reporter(settings(server, c.keys["mx1"]), Spool(tmp_path / "spool"),
                     {"version": "test"})
        try:
            for n in range(300):
                r.send("finding", {"problem": "test", "subject": "x", "n": n})
            r.start()
            assert poll(lambda: r.status().spool.depth == 0 or None, 60), serve.text()
            listener = int((server.log.parent / "sshd.pid").read_text())
            behind = sessions_behind(listener)
            assert len(behind) == 1
            assert behind[0].cmdline()[0] == "nodewarden-coordinator-session"
            assert Path(behind[0].exe()).name in ("dash", "sh", "bash")
            assert "session started" in serve.text()
        finally:
            r.stop()
    assert findings(c, "mx1") == list(range(300))


def test_a_session_says_clearly_when_serve_is_not_running(tmp_path: Path) -> None:
    c, sock = coordinator(tmp_path / "c", ["mx1"])
    with running_sshd(c.authorized_keys) as server:
        done = subprocess.run(ssh_command(server, c.keys["mx1"]),
                              input='{"type": "hello", "id": "h", "proto": 1}\n',
                              capture_output=True, text=True, timeout=60, env=environment(),
                              check=False)
    assert done.returncode == 3
    reply = json.loads(done.stdout)
    assert reply["type"] == "error"
    assert "serve process cannot be reached" in reply["reason"]
    assert "nothing was recorded" in reply["reason"]
    assert f"cannot reach serve at {sock}" in done.stderr
    assert "is `nodewarden-coordinator serve` running?" in done.stderr
    assert c.messages() == []


def test_serve_killed_while_agents_stream_loses_and_duplicates_nothing(
        tmp_path: Path) -> None:
    """SIGKILL while batches are being committed; a new serve on the same socket; the
    agents' spools send again: every message once, in order, and the store intact."""
    hosts = ["mx1", "mx2", "mx3"]
    c, sock = coordinator(tmp_path / "c", hosts)
    with running_sshd(c.authorized_keys) as server:
        procs = []
        with running_serve(c.config, sock, tmp_path / "serve.log") as serve:
            for host in hosts:
                config = tmp_path / f"{host}.json"
                raw = asdict(settings(server, c.keys[host], window=8))
                config.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                              for k, v in raw.items()}))
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.integration._reporter_proc", str(config),
                     str(tmp_path / f"spool-{host}"), "2000"],
                    stdout=subprocess.PIPE, text=True, cwd=REPO))
            assert poll(lambda: all(len(findings(c, h)) >= 150 for h in hosts) or None, 120)
            serve.kill()
        sent = {h: len(findings(c, h)) for h in hosts}
        assert all(150 <= n < 2000 for n in sent.values()), sent  # killed mid-stream
        with running_serve(c.config, sock, tmp_path / "serve2.log"):
            try:
                for p in procs:
                    out, _ = p.communicate(timeout=180)
                    assert "drained" in out
            finally:
                for p in procs:
                    p.kill()
    for host in hosts:
        assert findings(c, host) == list(range(2000))
    db = sqlite3.connect(c.store)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
