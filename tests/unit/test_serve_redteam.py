"""serve and the thin session attacked (coordinator/serve.py, handover.py, handoff.py):
a hostile agent's flood, serve out of descriptors, a malformed hand-over, and a socket
another local user listens on. Real sockets and pipes; serve is driven turn by turn."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.store import SqliteStore
from tests.unit._signatures import REPO
from tests.unit.test_serve import Harness, add_host, hello


@pytest.fixture
def red(tmp_path: Path) -> Iterator[Harness]:
    store = SqliteStore(tmp_path / "fleet.db")
    add_host(store, "mx1")
    h = Harness(tmp_path, store)
    yield h
    h.close()
    store.close()


def test_a_flood_of_short_lines_is_not_read_far_ahead_of_its_answers(red: Harness) -> None:
    """An agent that sends tiny lines faster than 256 a turn are answered must not make
    serve buffer its input without bound (memory, and a copy of the buffer per line)."""
    a = red.hand_over("mx1")
    sent = 8 << 20
    a.outbox = b"x\n" * (sent // 2)  # each line an error reply; the agent reads them all
    answered = 0
    for _ in range(30):
        red.turn()
        answered += len(a.replies())
    taken_in = sent - len(a.outbox)
    # what serve took in but has not answered: a read or two and the pipe, not 30 reads
    assert taken_in - 2 * answered < 512 * 1024, (taken_in, answered)


def test_running_out_of_descriptors_does_not_end_serve(red: Harness) -> None:
    """accept() failing (EMFILE: the open-files limit) must not escape turn(); the
    session waiting in the backlog is served once descriptors are free again."""
    c_in, a_out = os.pipe()
    a_in, c_out = os.pipe()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(red.server.path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (8, hard))
    try:
        red.server.turn(0.05)  # accept fails: EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    socket.send_fds(sock, [json.dumps({"host": "mx1"}).encode() + b"\n"], [c_in, c_out])
    for fd in (c_in, c_out):
        os.close(fd)
    red.turns(3)
    assert red.server.sessions == 1
    os.write(a_out, json.dumps(hello()).encode() + b"\n")
    red.turns(2)
    os.set_blocking(a_in, False)
    assert json.loads(os.read(a_in, 4096))["type"] == "ack"
    for fd in (a_in, a_out):
        os.close(fd)
    sock.close()


def test_a_hand_over_nested_too_deep_is_refused_not_a_crash(red: Harness) -> None:
    """The hand-over's JSON, `[` 1,024 times, makes json raise RecursionError (not a
    ValueError): it must be refused like any malformed hand-over."""
    r, w = os.pipe()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(red.server.path)
    socket.send_fds(sock, [b"[" * 1024], [r, w])
    os.close(r)
    os.close(w)
    red.turns(3)
    sock.settimeout(10)
    assert sock.recv(16) == b""  # closed without a code: nothing served
    assert red.server.sessions == 0
    sock.close()


IMPOSTOR = """\
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
print("ready", flush=True)
s.settimeout(30)
c, _ = s.accept()
c.settimeout(30)
try:
    data, fds, _, _ = socket.recv_fds(c, 1024, 2)
except OSError:
    fds = []
if fds:
    c.send(b"0\\n")
print(f"stolen {len(fds)}" if fds else "nothing", flush=True)
"""

HAND_OFF = ("import sys; from coordinator.handoff import hand_off; "
            "sys.exit(hand_off(sys.argv[1], 'mx1'))")


@pytest.mark.skipif(os.geteuid() != 0, reason="another user is played with setuid")
def test_a_session_hands_nothing_to_a_socket_another_user_listens_on() -> None:
    """Another local user who binds the socket path first (a socket directory it can
    write, a serve that is down) must not get the agent's pipes: the thin session checks
    its peer's uid, as serve checks the session's."""
    top = Path(tempfile.mkdtemp(prefix="nw-handoff-"))
    top.chmod(0o777)
    path = str(top / "serve.sock")
    impostor = subprocess.Popen([sys.executable, "-c", IMPOSTOR, path],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "ready"
        session = subprocess.run([sys.executable, "-c", HAND_OFF, path], cwd=REPO,
                                 stdin=subprocess.PIPE, capture_output=True, timeout=30,
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        out, _ = impostor.communicate(timeout=30)
    finally:
        if impostor.poll() is None:
            impostor.kill()
            impostor.wait()
        shutil.rmtree(top)
    assert out.strip() == "nothing"
    assert session.returncode == 3
    reply = json.loads(session.stdout.decode().splitlines()[0])
    assert reply["type"] == "error" and "nothing was recorded" in reply["reason"]


def test_a_host_removed_while_its_session_is_held_gets_no_lease(red: Harness) -> None:
    """`keys remove` takes the key out ("it cannot connect again"), but a session serve
    already holds lives on: it must not be granted a lease (nor fire, nor count in an
    incident) for a host the store no longer has; the session ends (code 1)."""
    a = red.hand_over("mx1")
    a.send(hello())
    assert red.until(a, 1)[0]["type"] == "ack"
    red.store.run(lambda tx: tx.remove_host("mx1", 1_800_000_000.0))
    a.send({"type": "lease-request", "id": "l1", "action": "node-restart",
            "subject": "mx1", "ttl_s": 60})
    [reply] = red.until(a, 1)
    assert reply["type"] == "error" and "no longer known" in reply["reason"]
    red.turns(2)
    assert a.code() == "1\n"
    assert red.store.run(lambda tx: tx.leases()) == []


def test_hand_overs_waiting_together_are_all_taken_in_the_next_turns(red: Harness) -> None:
    """A reconnect storm: sessions that connected while serve was busy are accepted
    together, not one a turn (each turn costs a commit; the backlog would fill and the
    next sessions be refused at once, EAGAIN)."""
    for name in ("mx2", "mx3", "mx4"):
        add_host(red.store, name)
    fds: list[int] = []
    socks: list[socket.socket] = []
    for name in ("mx1", "mx2", "mx3", "mx4"):
        c_in, a_out = os.pipe()
        a_in, c_out = os.pipe()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(red.server.path)
        socket.send_fds(sock, [json.dumps({"host": name}).encode() + b"\n"], [c_in, c_out])
        os.close(c_in)
        os.close(c_out)
        fds += [a_in, a_out]
        socks.append(sock)
    red.turns(2)  # the accepts, then the hand-overs
    assert red.server.sessions == 4
    for fd in fds:
        os.close(fd)
    for sock in socks:
        sock.close()
