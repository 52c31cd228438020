"""Two coordinators sharing one PostgreSQL database serve one fleet, active-active, with
the SQLite store's guarantees. The server is a real one the tests start
(tests/integration/_postgres.py), each coordinator is behind its own real sshd on
127.0.0.1, and every session is a `nodewarden-coordinator session` process.

- Twenty agents of one group ask for a node-restart lease at the same instant, half
  through each coordinator: exactly max_disruptive are granted.
- A message cannot speak for another host.
- A storm seen through one coordinator refuses leases through the other, and pages once.
- A lease granted through one coordinator and not renewed expires for the other.
- A coordinator SIGKILLed inside a transaction, after it has written, loses nothing and
  duplicates nothing: the agent sends again and the message is kept, and takes effect,
  once.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from coordinator.pgstore import PostgresStore
from coordinator.session import Session
from coordinator.settings import CoordinatorSettings, GroupSettings
from coordinator.store import HostRecord, Tx
from tests.integration._coordinator import Coordinator, make_coordinator
from tests.integration._postgres import Cluster
from tests.integration._race import lease_race
from tests.integration._sshd import Sshd, environment, running_sshd, ssh_command
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts

HOSTS = 20
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"


@dataclass(frozen=True)
class Fleet:
    url: str
    coordinators: tuple[Coordinator, Coordinator]
    sshds: tuple[Sshd, Sshd]

    def route(self, host: str) -> tuple[Sshd, Path]:
        """mx0-mx9 through the first coordinator, mx10-mx19 through the second."""
        side = int(host[2:]) * 2 // HOSTS
        return self.sshds[side], self.coordinators[side].keys[host]


@pytest.fixture(scope="module")
def fleet(postgres: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Both coordinators set up at once on one empty database (their first `keys add`
    migrates it, once)."""
    work = tmp_path_factory.mktemp("pgfleet")
    half = HOSTS // 2
    with postgres.database(migrated=False) as url, contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(2) as pool:
            setting_up = [pool.submit(make_coordinator, work / side, hosts, store_url=url)
                          for side, hosts in (("a", [f"mx{i}" for i in range(half)]),
                                              ("b", [f"mx{i}" for i in range(half, HOSTS)]))]
            made = (setting_up[0].result(), setting_up[1].result())
        sshds = (stack.enter_context(running_sshd(made[0].authorized_keys)),
                 stack.enter_context(running_sshd(made[1].authorized_keys)))
        yield Fleet(url, made, sshds)


def converse(sshd: Sshd, key: Path, messages: list[dict[str, Any]]
             ) -> tuple[int, list[dict[str, Any]]]:
    lines = "".join(json.dumps(m) + "\n" for m in messages)
    done = subprocess.run(ssh_command(sshd, key), input=lines, capture_output=True, text=True,
                          timeout=60, env=environment(), check=False)
    return done.returncode, [json.loads(x) for x in done.stdout.splitlines()]


def test_twenty_agents_through_two_coordinators_get_exactly_max_disruptive_leases(
        fleet: Fleet) -> None:
    replies = lease_race([ssh_command(*fleet.route(f"mx{i}")) for i in range(HOSTS)])
    assert [r["type"] for r in replies].count("lease-grant") == 2
    assert all(r["type"] in ("lease-grant", "lease-deny") for r in replies)
    store = fleet.coordinators[1].opened()
    try:
        active = store.run(lambda tx: tx.active_leases("mail", 0.0))
    finally:
        store.close()
    granted = sorted(f"mx{i}" for i, r in enumerate(replies) if r["type"] == "lease-grant")
    assert sorted(lease.host for lease in active) == granted


def test_a_message_cannot_speak_for_another_host(fleet: Fleet) -> None:
    code, replies = converse(*fleet.route("mx12"), [
        {"type": "hello", "id": "s1-hello", "proto": 1, "host": "mx12"},
        {"type": "finding", "id": "s1-f1", "host": "mx3", "problem": "nfs-hang"},
        {"type": "finding", "id": "s1-f2", "problem": "nfs-hang", "subject": "nas-a1"},
    ])
    assert code == 0 and [r["type"] for r in replies] == ["ack", "error", "ack"]
    assert "speaks for host mx12" in replies[1]["reason"]
    kept = [m[1] for m in fleet.coordinators[0].messages() if m[1].startswith("s1-")]
    assert kept == ["s1-hello", "s1-f2"]  # read through the other coordinator's config


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = CoordinatorSettings(groups={"mail": GroupSettings(max_disruptive=2)})


@pytest.fixture
def two(postgres_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two coordinators' stores on one database, with 20 mail hosts."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)

    def add(tx: Tx) -> None:
        for i in range(HOSTS):
            tx.put_host(HostRecord(f"mx{i}", "mail", "mail", KEY, 0.0, None))

    a.run(add)
    yield a, b
    a.close()
    b.close()


def say(store: PostgresStore, host: str, clock: FakeClock, **msg: Any) -> dict[str, Any]:
    """One message in a session of its own (hello first) through `store`'s coordinator."""
    record = store.run(lambda tx: tx.host(host))
    assert record is not None
    session = Session(record, store, SETTINGS, clock)
    assert session.answer(json.dumps({"type": "hello", "id": f"h-{msg['id']}", "proto": 1}
                                     ).encode())["type"] == "ack"
    return session.answer(json.dumps(msg).encode())


def test_a_storm_seen_through_one_coordinator_refuses_leases_through_both_and_pages_once(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    clock = FakeClock()
    for i in range(1, 8):  # 7 of 20 firing critical, over 30%; reported through both
        assert say(two[i % 2], f"mx{i}", clock, type="finding", id=f"f{i}", problem="fs-error",
                   subject="sda1", severity="critical")["type"] == "ack"
    for n, store in enumerate(two * 2):
        denied = say(store, "mx0", clock, type="lease-request", id=f"r{n}",
                     action="node-restart", subject="mx0", ttl_s=60)
        assert denied["type"] == "lease-deny" and "storm in group mail: 7 of 20" in \
            denied["reason"]
    alerts = two[1].run(lambda tx: tx.alerts())
    assert [(a[1], a[2]) for a in alerts] == [("storm", "mail")]  # paged once


def test_an_unrenewed_lease_granted_through_one_coordinator_expires_for_the_other(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    clock = FakeClock()
    a, b = two
    first = say(a, "mx0", clock, type="lease-request", id="r1", action="node-restart",
                subject="mx0", ttl_s=60)
    second = say(b, "mx1", clock, type="lease-request", id="r1", action="node-restart",
                 subject="mx1", ttl_s=60)
    assert first["type"] == second["type"] == "lease-grant"
    assert say(b, "mx2", clock, type="lease-request", id="r1", action="node-restart",
               subject="mx2", ttl_s=60)["type"] == "lease-deny"
    clock.now += 50
    assert say(b, "mx1", clock, type="lease-renew", id="n1", lease=second["lease"],
               ttl_s=60)["type"] == "lease-grant"
    clock.now += 20  # mx0's lease, never renewed, has expired; mx1's holds
    assert say(b, "mx2", clock, type="lease-request", id="r2", action="node-restart",
               subject="mx2", ttl_s=60)["type"] == "lease-grant"
    assert say(a, "mx0", clock, type="lease-renew", id="n1", lease=first["lease"],
               ttl_s=60)["type"] == "lease-deny"


def _blocked_on_messages(cluster: Cluster, database: str) -> tuple[int, str] | None:
    """(backend pid, application name) of a transaction waiting to write `messages`."""
    with cluster.connect(database) as db:
        row = db.execute(
            "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a "
            "ON a.pid = l.pid WHERE NOT l.granted AND l.relation = 'messages'::regclass "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = "
            "current_database())").fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _holds(cluster: Cluster, database: str, backend: int, table: str) -> bool:
    """Whether that backend's transaction has written `table` (holds its row lock)."""
    with cluster.connect(database) as db:
        return db.execute("SELECT 1 FROM pg_locks WHERE pid = %s AND granted AND mode = "
                          "'RowExclusiveLock' AND relation = %s::regclass",
                          (backend, table)).fetchone() is not None


def _gone(cluster: Cluster, backend: int) -> bool | None:
    with cluster.connect() as db:
        row = db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                         (backend,)).fetchone()
    return True if row is None else None


def _kill_mid_transaction(cluster: Cluster, database: str, agent: subprocess.Popen[str],
                          request: dict[str, Any]) -> None:
    """The test takes a lock that lets the coordinator read and write every table but
    `messages`, so its transaction blocks on its last statement, after it has granted
    the lease; then SIGKILLs the session process and lets go of the lock."""
    assert agent.stdin is not None and agent.stdout is not None
    with cluster.connect(database, autocommit=False) as holder:
        holder.execute("LOCK TABLE messages IN SHARE MODE")
        agent.stdin.write(json.dumps(request) + "\n")
        agent.stdin.flush()
        blocked = poll(lambda: _blocked_on_messages(cluster, database), 30)
        assert blocked is not None, "the coordinator's transaction never blocked"
        backend, name = blocked
        assert _holds(cluster, database, backend, "leases")  # the lease is written...
        assert _holds(cluster, database, backend, "hosts")  # ...and the host seen
        session = psutil.Process(int(name.rsplit(" ", 1)[1]))  # "nodewarden-coordinator PID"
        assert "session" in session.cmdline() and "nas1" in session.cmdline()
        session.kill()
        session.wait(30)
        holder.rollback()
    assert poll(lambda: _gone(cluster, backend), 30)  # its server side ended too
    assert agent.stdout.readline() == ""  # no reply: the agent will send again
    agent.wait(30)


def test_a_coordinator_killed_inside_a_transaction_loses_nothing_and_duplicates_nothing(
        postgres: Cluster, tmp_path: Path) -> None:
    request = {"type": "lease-request", "id": "r1", "action": "node-restart",
               "subject": "nas1", "ttl_s": 600}
    with postgres.database() as url:
        made = make_coordinator(tmp_path / "c", ["nas1", "nas2"], group="storage",
                                max_disruptive=1, store_url=url)
        with running_sshd(made.authorized_keys) as sshd:
            agent = subprocess.Popen(ssh_command(sshd, made.keys["nas1"]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=environment())
            try:
                assert agent.stdin is not None and agent.stdout is not None
                agent.stdin.write('{"type": "hello", "id": "h1", "proto": 1}\n')
                agent.stdin.flush()
                assert json.loads(agent.stdout.readline())["type"] == "ack"
                _kill_mid_transaction(postgres, url.rsplit("/", 1)[1], agent, request)
            finally:
                with contextlib.suppress(OSError):
                    agent.kill()
                agent.wait(30)
            store = made.opened()
            try:
                assert store.run(lambda tx: tx.leases()) == []  # the grant was not kept
                assert [m[1] for m in made.messages("nas1")] == ["h1"]  # the hello was
                # the agent sends again, and once more (a lost reply): decided once
                code, replies = converse(sshd, made.keys["nas1"], [
                    {"type": "hello", "id": "h2", "proto": 1}, request, request])
                assert code == 0 and replies[1]["type"] == "lease-grant"
                assert replies[2] == replies[1]
                leases = store.run(lambda tx: tx.leases())
                assert [(lease.id, lease.host) for lease in leases] == \
                    [(replies[1]["lease"], "nas1")]
                assert [m[1] for m in made.messages("nas1")] == ["h1", "h2", "r1"]
                # the group's count sees that one lease, and no lock is left held
                _, other = converse(sshd, made.keys["nas2"], [
                    {"type": "hello", "id": "h1", "proto": 1}, {**request, "subject": "nas2"}])
                assert other[1]["type"] == "lease-deny" and "held by nas1" in \
                    other[1]["reason"]
            finally:
                store.close()
