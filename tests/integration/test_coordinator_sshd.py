"""The coordinator behind a real OpenSSH sshd on 127.0.0.1: each agent's key runs
`nodewarden-coordinator session --host NAME` as a forced command, whatever the client
asks to run; the key is the identity; twenty agents of one group asking for a
node-restart lease at the same instant get exactly max_disruptive grants; an unknown
key and a changed host key get nowhere and leave nothing in the store."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.store import SqliteStore
from tests.integration._coordinator import make_coordinator
from tests.integration._race import lease_race
from tests.integration._serve import running_serve
from tests.integration._sshd import Sshd, environment, keypair, running_sshd, ssh_command

pytestmark = pytest.mark.realparts

HOSTS = 20


@dataclass(frozen=True)
class Fleet:
    config: Path
    store: Path
    keys: dict[str, Path]
    sshd: Sshd


@pytest.fixture(scope="module", params=["in-process", "serve"])
def fleet(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Every test twice: each session a process of its own, and thin sessions handed to
    one `serve` (the same guarantees either way)."""
    work = tmp_path_factory.mktemp("coordinator")
    sock = work / "run" / "serve.sock"
    made = make_coordinator(work, [f"mx{i}" for i in range(HOSTS)], max_disruptive=2,
                            serve_socket=str(sock) if request.param == "serve" else "")
    with running_sshd(made.authorized_keys) as sshd, contextlib.ExitStack() as stack:
        if request.param == "serve":
            stack.enter_context(running_serve(made.config, sock, work / "serve.log"))
        yield Fleet(made.config, made.store, made.keys, sshd)


def converse(fleet: Fleet, host: str, messages: list[dict[str, Any]], *remote: str
             ) -> tuple[int, list[dict[str, Any]]]:
    lines = "".join(json.dumps(m) + "\n" for m in messages)
    done = subprocess.run(ssh_command(fleet.sshd, fleet.keys[host], *remote), input=lines,
                          capture_output=True, text=True, timeout=60, env=environment(),
                          check=False)
    return done.returncode, [json.loads(x) for x in done.stdout.splitlines()]


def test_a_session_answers_each_line_and_refuses_to_speak_for_another_host(
        fleet: Fleet) -> None:
    code, replies = converse(fleet, "mx3", [
        {"type": "hello", "id": "s1-hello", "proto": 1, "host": "mx3"},
        {"type": "heartbeat", "id": "s1-beat"},
        {"type": "finding", "id": "s1-f1", "host": "mx4", "problem": "nfs-hang"},
        {"type": "finding", "id": "s1-f2", "problem": "nfs-hang", "subject": "nas-a1"},
    ])
    assert code == 0
    assert [r["type"] for r in replies] == ["ack", "ack", "error", "ack"]
    assert "speaks for host mx3" in replies[2]["reason"]
    kept = SqliteStore(fleet.store).run(lambda tx: tx.messages("mx3"))
    assert [m[1] for m in kept] == ["s1-hello", "s1-beat", "s1-f2"]
    assert not SqliteStore(fleet.store).run(lambda tx: tx.messages("mx4"))


def test_the_forced_command_runs_whatever_the_client_asks(fleet: Fleet, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    code, replies = converse(fleet, "mx5", [{"type": "hello", "id": "s2", "proto": 1}],
                             "touch", str(canary))
    assert code == 0 and replies == [{"type": "ack", "id": "s2"}]
    assert not canary.exists()


def test_twenty_agents_asking_at_once_get_exactly_max_disruptive_leases(fleet: Fleet) -> None:
    replies = lease_race([ssh_command(fleet.sshd, fleet.keys[f"mx{i}"]) for i in range(HOSTS)])
    assert sorted(r["type"] for r in replies).count("lease-grant") == 2
    active = SqliteStore(fleet.store).run(lambda tx: tx.active_leases("mail", 0.0))
    assert len(active) == 2
    assert all(r["type"] in ("lease-grant", "lease-deny") for r in replies)


def test_an_unknown_key_gets_nowhere(fleet: Fleet, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    keypair(stranger)
    before = len(SqliteStore(fleet.store).run(lambda tx: tx.messages()))
    done = subprocess.run(ssh_command(fleet.sshd, stranger), input='{"type": "hello"}\n',
                          capture_output=True, text=True, timeout=60, env=environment(),
                          check=False)
    assert done.returncode == 255 and done.stdout == ""
    assert len(SqliteStore(fleet.store).run(lambda tx: tx.messages())) == before


def test_a_changed_host_key_is_refused_and_nothing_is_sent(fleet: Fleet,
                                                         tmp_path: Path) -> None:
    other = tmp_path / "other_host_key"
    other_pub = keypair(other)
    pinned = tmp_path / "known_hosts"
    pinned.write_text(f"[127.0.0.1]:{fleet.sshd.port} {other_pub}\n")
    argv = [x if not x.startswith("UserKnownHostsFile=") else f"UserKnownHostsFile={pinned}"
            for x in ssh_command(fleet.sshd, fleet.keys["mx6"])]
    before = len(SqliteStore(fleet.store).run(lambda tx: tx.messages("mx6")))
    done = subprocess.run(argv, input='{"type": "hello", "id": "h", "proto": 1}\n',
                          capture_output=True, text=True, timeout=60, env=environment(),
                          check=False)
    assert done.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in done.stderr
    assert len(SqliteStore(fleet.store).run(lambda tx: tx.messages("mx6"))) == before
