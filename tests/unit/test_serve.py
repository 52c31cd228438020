"""serve, the one process behind thin sessions (coordinator/serve.py), driven turn by turn.

Each test hands sessions over as the thin session does (coordinator/handoff.py): a real
Unix socket, the agent's two pipes passed with SCM_RIGHTS, the test keeping the other
ends (it is the agent) and the socket (it is the waiter, which gets the exit code).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from coordinator.handover import ServeError
from coordinator.serve import Server
from coordinator.settings import CoordinatorSettings
from coordinator.store import HostRecord, SqliteStore
from tests.unit._tmpfs import fill_up, small_tmpfs

NOW = 1_800_000_000.0


@dataclass
class Agent:
    """The test's ends of one handed-over session."""

    to_coordinator: int
    from_coordinator: int
    waiter: socket.socket
    buffer: bytes = b""
    outbox: bytes = b""

    def send(self, *messages: dict[str, Any] | bytes) -> None:
        """Queue lines; they go as the pipe takes them (the harness writes between turns:
        one thread plays both sides)."""
        self.outbox += b"".join(m if isinstance(m, bytes) else json.dumps(m).encode() + b"\n"
                                for m in messages)
        self.write()

    def write(self) -> None:
        while self.outbox:
            try:
                n = os.write(self.to_coordinator, self.outbox)
            except (BlockingIOError, OSError):
                return
            self.outbox = self.outbox[n:]

    def replies(self) -> list[dict[str, Any]]:
        """Every complete reply written so far (non-blocking)."""
        out = []
        while True:
            try:
                chunk = os.read(self.from_coordinator, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        out += [json.loads(line) for line in lines]
        return out

    def hang_up(self) -> None:
        os.close(self.to_coordinator)

    def code(self) -> str:
        """What serve told the waiter ("" when it closed without a code)."""
        self.waiter.settimeout(10)
        return self.waiter.recv(16).decode()


def hello(n: int = 0) -> dict[str, Any]:
    return {"type": "hello", "id": f"h{n}", "proto": 1}


def beat(n: int) -> dict[str, Any]:
    return {"type": "heartbeat", "id": f"b{n}"}


class Harness:
    def __init__(self, tmp: Path, store: SqliteStore, **over: Any) -> None:
        settings = replace(CoordinatorSettings(), serve_socket=str(tmp / "run" / "s.sock"),
                           **over)
        self.store = store
        self.server = Server(settings, store, lambda: NOW)
        self.server.listen()
        self.agents: list[Agent] = []

    def hand_over(self, host: str) -> Agent:
        c_in, a_out = os.pipe()
        a_in, c_out = os.pipe()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.server.path)
        socket.send_fds(sock, [json.dumps({"host": host}).encode() + b"\n"], [c_in, c_out])
        os.close(c_in)
        os.close(c_out)
        os.set_blocking(a_in, False)
        os.set_blocking(a_out, False)
        agent = Agent(a_out, a_in, sock)
        self.agents.append(agent)
        self.turns(2)  # the accept, then the hand-over
        return agent

    def turns(self, n: int) -> None:
        for _ in range(n):
            self.turn()

    def turn(self) -> None:
        for agent in self.agents:
            agent.write()
        self.server.turn(0.05)

    def until(self, agent: Agent, count: int, limit: int = 200) -> list[dict[str, Any]]:
        """Turn until `agent` has `count` replies (bounded by turns, not by time)."""
        got: list[dict[str, Any]] = []
        for _ in range(limit):
            got += agent.replies()
            if len(got) >= count:
                return got
            self.turn()
        raise AssertionError(f"{len(got)} of {count} replies: {got[-3:]}")

    def close(self) -> None:
        self.server.close()
        for a in self.agents:
            for fd in (a.to_coordinator, a.from_coordinator):
                with contextlib.suppress(OSError):
                    os.close(fd)
            a.waiter.close()


def add_host(store: SqliteStore, name: str) -> None:
    store.run(lambda tx: tx.put_host(HostRecord(name, "mail", "mail", "ssh-ed25519 AAAA",
                                                NOW, None)))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "fleet.db")
    for name in ("mx1", "mx2", "mx3"):
        add_host(s, name)
    yield s
    s.close()


@pytest.fixture
def harness(tmp_path: Path, store: SqliteStore) -> Iterator[Harness]:
    h = Harness(tmp_path, store)
    yield h
    h.close()


def test_a_session_is_answered_in_order_and_ends_with_code_0(harness: Harness,
                                                              store: SqliteStore) -> None:
    a = harness.hand_over("mx1")
    a.send(hello(), beat(1), beat(2), beat(3))
    assert [r["id"] for r in harness.until(a, 4)] == ["h0", "b1", "b2", "b3"]
    a.hang_up()
    harness.turns(3)
    assert a.code() == "0\n"
    assert harness.server.sessions == 0
    assert [m[1] for m in store.run(lambda tx: tx.messages("mx1"))] == ["h0", "b1", "b2", "b3"]


def test_an_unknown_host_is_told_and_its_waiter_exits_1(harness: Harness) -> None:
    a = harness.hand_over("ghost")
    assert "not known here" in a.replies()[0]["reason"]
    assert a.code() == "1\n"


def test_a_wrong_protocol_ends_the_session_after_its_reply(harness: Harness) -> None:
    a = harness.hand_over("mx1")
    a.send({"type": "hello", "id": "h", "proto": 99}, beat(1))
    [reply] = harness.until(a, 1)
    assert reply["type"] == "error" and "protocol version 99" in reply["reason"]
    harness.turns(2)
    assert a.code() == "1\n"
    assert a.replies() == []  # the line after it is not answered


def test_bad_lines_get_errors_and_the_session_goes_on(harness: Harness) -> None:
    a = harness.hand_over("mx1")
    a.send(hello(), b"{not json\n", b'{"type": "gossip", "id": "g"}\n')
    a.send(b"x" * (1024 * 1024 + 10) + b"\n", beat(1))
    replies = harness.until(a, 5)
    assert [r["type"] for r in replies] == ["ack", "error", "error", "error", "ack"]
    assert "over the 1048576-byte limit" in replies[3]["reason"]
    assert harness.server.sessions == 1


def test_a_new_session_of_the_same_host_replaces_the_old(harness: Harness) -> None:
    first = harness.hand_over("mx1")
    second = harness.hand_over("mx1")
    assert first.code() == "0\n"
    assert os.read(first.from_coordinator, 10) == b""  # its pipe closed
    second.send(hello())
    assert harness.until(second, 1)[0]["type"] == "ack"
    assert harness.server.sessions == 1


def test_a_session_over_the_limit_is_refused_with_code_3(tmp_path: Path,
                                                          store: SqliteStore) -> None:
    h = Harness(tmp_path, store, max_sessions=1)
    try:
        h.hand_over("mx1")
        over = h.hand_over("mx2")
        assert "limit of 1 sessions" in over.replies()[0]["reason"]
        assert over.code() == "3\n"
    finally:
        h.close()


def test_one_agent_flooding_does_not_hold_up_another(harness: Harness) -> None:
    flood, quiet = harness.hand_over("mx1"), harness.hand_over("mx2")
    flood.send(hello(), *(beat(n) for n in range(999)))
    quiet.send(hello())
    harness.turns(1)
    assert [r["id"] for r in quiet.replies()] == ["h0"]
    assert len(flood.replies()) == 256  # one batch per agent per turn
    assert len(harness.until(flood, 1000 - 256)) == 1000 - 256


def test_an_agent_that_does_not_read_is_not_read_and_loses_nothing(
        tmp_path: Path, store: SqliteStore) -> None:
    h = Harness(tmp_path, store)
    h.server.max_unsent = 4096
    try:
        slow, other = h.hand_over("mx1"), h.hand_over("mx2")
        fcntl.fcntl(slow.from_coordinator, fcntl.F_SETPIPE_SZ, 4096)
        slow.send(hello(), *(beat(n) for n in range(1499)))
        h.turns(60)  # its replies fill the pipe (4 KiB), then 4 KiB more: not read
        assert h.server.stalled() == ["mx1"]
        kept = len(store.run(lambda tx: tx.messages("mx1")))
        assert kept < 1500
        other.send(hello())
        assert h.until(other, 1)[0]["id"] == "h0"  # the others are served meanwhile
        replies = h.until(slow, 1500)
        assert [r["id"] for r in replies] == ["h0", *(f"b{n}" for n in range(1499))]
        assert h.server.stalled() == []
    finally:
        h.close()


def test_a_full_disk_ends_the_sessions_with_code_3_and_keeps_nothing_half(
        tmp_path: Path) -> None:
    with small_tmpfs("512k") as mnt:
        store = SqliteStore(mnt / "fleet.db")
        add_host(store, "mx1")
        h = Harness(tmp_path, store)
        try:
            a = h.hand_over("mx1")
            a.send(hello())
            h.until(a, 1)
            fill_up(mnt / "filler")
            a.send(*({**beat(n), "pad": "x" * 2000} for n in range(200)))
            replies = h.until(a, 1)
            assert replies[-1]["type"] == "error"
            assert "store unavailable" in replies[-1]["reason"]
            h.turns(2)
            assert a.code() == "3\n"
            assert [m[1] for m in store.run(lambda tx: tx.messages("mx1"))] == ["h0"]
        finally:
            h.close()
            store.close()


def test_a_second_serve_on_the_same_socket_is_refused(harness: Harness, tmp_path: Path,
                                                       store: SqliteStore) -> None:
    with pytest.raises(ServeError, match="another serve is running"):
        Harness(tmp_path, store)


def test_a_stale_socket_file_is_replaced(tmp_path: Path, store: SqliteStore) -> None:
    (tmp_path / "run").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "run" / "s.sock"))
    stale.close()  # the file stays, nobody listens
    h = Harness(tmp_path, store)
    try:
        a = h.hand_over("mx1")
        a.send(hello())
        assert h.until(a, 1)[0]["type"] == "ack"
    finally:
        h.close()


def test_only_the_coordinators_user_may_hand_a_session_over(store: SqliteStore) -> None:
    """Another local user who reached the socket (here: it is made world-writable)
    cannot speak for a host: serve refuses it by its peer credentials."""
    top = Path(tempfile.mkdtemp(prefix="nw-serve-"))
    top.chmod(0o755)
    harness = Harness(top, store)
    try:
        Path(harness.server.path).parent.chmod(0o755)
        Path(harness.server.path).chmod(0o666)
        refused_by_credentials(harness)
    finally:
        harness.close()
        shutil.rmtree(top)


def refused_by_credentials(harness: Harness) -> None:
    script = ("import os, socket, json, sys\n"
              "os.setgid(65534); os.setuid(65534)\n"
              "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
              "s.connect(sys.argv[1])\n"
              "r, w = os.pipe()\n"
              "s.settimeout(10)\n"
              "try:\n"  # serve may close it before the send (EPIPE): refused either way
              "    socket.send_fds(s, [json.dumps({'host': 'mx1'}).encode()], [r, w])\n"
              "    got = s.recv(16)\n"
              "except (BrokenPipeError, ConnectionResetError):\n"
              "    got = b''\n"
              "print('closed' if got == b'' else repr(got))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, harness.server.path],
                            stdout=subprocess.PIPE, text=True)
    for _ in range(100):
        harness.server.turn(0.05)
        if proc.poll() is not None:
            break
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "closed"  # without a code: nothing was served
    assert harness.server.sessions == 0


def test_serve_without_a_socket_says_sessions_run_alone(tmp_path: Path,
                                                         store: SqliteStore) -> None:
    settings = replace(CoordinatorSettings(), serve_socket="")
    with pytest.raises(ServeError, match="own processes"):
        Server(settings, store, lambda: NOW).listen()
