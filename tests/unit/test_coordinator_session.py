"""A coordinator session (coordinator/session.py) over each real store, SQLite and
PostgreSQL (a server the tests start: tests/integration/_postgres.py): the key is the
identity, each message is answered once, leases are counted per group, bad input gets
an error and the session goes on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.report.wire import MAX_LINE_BYTES, LineTooLong
from coordinator.session import Session
from coordinator.settings import CoordinatorSettings, GroupSettings
from coordinator.store import MIGRATIONS, HostRecord, SqliteStore, StoreError, Tx
from coordinator.stores import Store, open_store

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.realparts)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """20 mail hosts and a NAS, in a store of each backend: SQLite in a file, PostgreSQL
    in a database of the test's own."""
    url = (f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    s = open_store(url)

    def add(tx: Tx) -> None:
        for i in range(20):
            tx.put_host(HostRecord(f"mx{i}", "mail", "mail", KEY, 0.0, None))
        tx.put_host(HostRecord("nas1", "storage", "storage", KEY, 0.0, None))

    s.run(add)
    yield s
    s.close()


SETTINGS = CoordinatorSettings(groups={"mail": GroupSettings(max_disruptive=2)})


def session(store: Store, host: str = "mx0", clock: FakeClock | None = None) -> Session:
    record = store.run(lambda tx: tx.host(host))
    assert record is not None
    return Session(record, store, SETTINGS, clock or FakeClock())


def say(s: Session, **msg: Any) -> dict[str, Any]:
    return s.answer(json.dumps(msg).encode() + b"\n")


def greeted(store: Store, host: str = "mx0", clock: FakeClock | None = None) -> Session:
    s = session(store, host, clock)
    assert say(s, type="hello", id="h1", proto=1) == {"type": "ack", "id": "h1"}
    return s


def test_the_first_message_must_be_hello_of_this_protocol(store: Store) -> None:
    s = session(store)
    assert "must be hello" in say(s, type="heartbeat", id="b1")["reason"]
    assert not s.ended
    assert "version 2 is not spoken" in say(s, type="hello", id="h1", proto=2)["reason"]
    assert s.ended  # a wrong version ends the session after the reply


def test_a_message_cannot_speak_for_another_host(store: Store) -> None:
    s = greeted(store)
    reply = say(s, type="finding", id="f1", host="mx1", problem="x")
    assert reply["type"] == "error" and "speaks for host mx0" in reply["reason"]
    assert say(s, type="finding", id="f2", host="mx0", problem="x")["type"] == "ack"
    kept = store.run(lambda tx: tx.messages())
    assert [(h, i) for h, i, *_ in kept] == [("mx0", "h1"), ("mx0", "f2")]


def test_the_same_message_twice_is_kept_once_and_answered_alike(store: Store) -> None:
    s = greeted(store)
    first = say(s, type="lease-request", id="r1", action="node-restart", subject="mx0",
                ttl_s=600)
    again = say(s, type="lease-request", id="r1", action="node-restart", subject="mx0",
                ttl_s=600)
    assert first == again and first["type"] == "lease-grant"
    assert len(store.run(lambda tx: tx.leases())) == 1
    # after a reconnect, too
    later = greeted(store)
    assert say(later, type="lease-request", id="r1", action="node-restart", subject="mx0",
               ttl_s=600) == first
    assert len(store.run(lambda tx: tx.leases())) == 1


def test_at_most_k_disruptive_leases_per_group(store: Store) -> None:
    replies = [say(greeted(store, f"mx{i}"), type="lease-request", id="r1",
                   action="node-restart", subject=f"mx{i}", ttl_s=600) for i in range(20)]
    granted = [r for r in replies if r["type"] == "lease-grant"]
    denied = [r for r in replies if r["type"] == "lease-deny"]
    assert len(granted) == 2 and len(denied) == 18
    assert "limit of 2" in denied[0]["reason"] and "mx0, mx1" in denied[0]["reason"]
    # another group has its own count (the default: 1)
    nas = say(greeted(store, "nas1"), type="lease-request", id="r1", action="failover",
              subject="nfs", ttl_s=60)
    assert nas["type"] == "lease-grant"


def test_an_unrenewed_lease_expires_and_a_renewed_one_holds(store: Store) -> None:
    clock = FakeClock()
    a, b, c = (greeted(store, f"mx{i}", clock) for i in range(3))
    grant_a = say(a, type="lease-request", id="r1", action="node-restart", subject="x",
                  ttl_s=60)
    say(b, type="lease-request", id="r1", action="node-restart", subject="x", ttl_s=60)
    assert say(c, type="lease-request", id="r1", action="node-restart", subject="x",
               ttl_s=60)["type"] == "lease-deny"
    clock.now += 50
    renewed = say(a, type="lease-renew", id="n1", lease=grant_a["lease"], ttl_s=60)
    assert renewed["type"] == "lease-grant" and renewed["expires"] == clock.now + 60
    clock.now += 20  # b's lease has expired, a's holds
    assert say(c, type="lease-request", id="r2", action="node-restart", subject="x",
               ttl_s=60)["type"] == "lease-grant"
    assert say(b, type="lease-renew", id="n1", lease=2, ttl_s=60)["type"] == "lease-deny"


def test_a_lease_is_renewed_and_released_only_by_its_holder(store: Store) -> None:
    a, b = greeted(store, "mx0"), greeted(store, "mx1")
    lease = say(a, type="lease-request", id="r1", action="node-restart", subject="x",
                ttl_s=60)["lease"]
    for kind in ("lease-renew", "lease-release"):
        reply = say(b, type=kind, id=f"{kind}-1", lease=lease, ttl_s=60)
        assert reply["type"] == "error" and "not one of mx1's" in reply["reason"]
    assert say(a, type="lease-release", id="x1", lease=lease) == {"type": "ack", "id": "x1"}
    assert store.run(lambda tx: tx.lease(lease)).released is not None  # type: ignore[union-attr]


def test_maintenance_refuses_leases_for_its_scope(store: Store) -> None:
    store.run(lambda tx: tx.set_maintenance("mail", True, 0.0))
    reply = say(greeted(store), type="lease-request", id="r1", action="node-restart",
                subject="x", ttl_s=60)
    assert reply["type"] == "lease-deny" and "maintenance (mail)" in reply["reason"]
    store.run(lambda tx: tx.set_maintenance("mail", False, 0.0))
    store.run(lambda tx: tx.set_maintenance("mx0", True, 0.0))
    assert "maintenance (mx0)" in say(greeted(store), type="lease-request", id="r2",
                                      action="node-restart", subject="x", ttl_s=60)["reason"]


@pytest.mark.parametrize(("fields", "reason"), [
    ({"action": "", "subject": "x", "ttl_s": 60}, "action must be"),
    ({"action": "a" * 65, "subject": "x", "ttl_s": 60}, "action must be"),
    ({"action": "node-restart", "subject": 3, "ttl_s": 60}, "subject must be"),
    ({"action": "node-restart", "subject": "x", "ttl_s": True}, "ttl_s must be a number"),
    ({"action": "node-restart", "subject": "x", "ttl_s": 0}, "between 1 and 3600"),
    ({"action": "node-restart", "subject": "x", "ttl_s": 1e9}, "between 1 and 3600"),
    ({"action": "node-restart", "subject": "x"}, "ttl_s must be a number"),
])
def test_a_bad_lease_request_gets_an_error_and_the_session_goes_on(
        store: Store, fields: dict[str, Any], reason: str) -> None:
    s = greeted(store)
    reply = say(s, type="lease-request", id="r1", **fields)
    assert reply["type"] == "error" and reason in reply["reason"]
    assert say(s, type="heartbeat", id="b1") == {"type": "ack", "id": "b1"}
    assert store.run(lambda tx: tx.leases()) == []


def test_bad_lines_get_errors_and_the_session_serves_on(store: Store) -> None:
    s = greeted(store)
    assert "malformed JSON" in s.answer(b"{oops\n")["reason"]
    assert "unknown message type" in say(s, type="ack", id="z")["reason"]
    assert "over the" in s.answer(LineTooLong(MAX_LINE_BYTES + 10))["reason"]
    assert "already said" in say(s, type="hello", id="h9", proto=1)["reason"]
    assert not s.ended
    assert say(s, type="heartbeat", id="b1")["type"] == "ack"


def test_a_newer_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    s = SqliteStore(path)
    assert s.schema_version == len(MIGRATIONS)
    s.run(lambda tx: tx._db.execute("INSERT INTO schema_version VALUES (99)"))
    s.close()
    with pytest.raises(StoreError, match="newer than this coordinator"):
        SqliteStore(path)


@pytest.mark.parametrize("line", [
    b'{"type":"lease-request","id":"r1","action":"node-restart","subject":"x","ttl_s":1'
    + b"0" * 400 + b"}",
    b'{"type":"lease-request","id":"r1","action":"\\ud800","subject":"x","ttl_s":60}',
    b'{"type":"lease-request","id":"r1","action":"node-restart","subject":"\\udfff",'
    b'"ttl_s":60}',
    b'{"type":"lease-renew","id":"r1","lease":9223372036854775808,"ttl_s":60}',
    b'{"type":"lease-release","id":"r1","lease":-1}',
    b'{"type":"heartbeat","id":"r1","x":1e400}',
    b'{"type":"lease-request","id":"r1","action":"x\\nlease=99 host=b","subject":"y",'
    b'"ttl_s":60}',
    b'{"type":"lease-request","id":"r1","action":"node-restart","subject":"\\u001b]0;x\\u0007",'
    b'"ttl_s":60}',
    # a NUL, which PostgreSQL's text cannot hold: refused by the wire, in any string
    b'{"type":"lease-request","id":"r1","action":"node-restart","subject":"x\\u0000",'
    b'"ttl_s":60}',
    b'{"type":"finding","id":"r1","problem":"fs-error","subject":"sda1\\u0000",'
    b'"severity":"critical"}',
    b'{"type":"heartbeat","id":"r1","\\u0000":1}',
])
def test_hostile_values_get_an_error_not_a_crash(store: Store, line: bytes) -> None:
    s = greeted(store)
    reply = s.answer(line + b"\n")
    assert reply["type"] == "error" and reply["id"] in ("r1", None)
    assert say(s, type="heartbeat", id="b1") == {"type": "ack", "id": "b1"}
    assert store.run(lambda tx: tx.leases()) == []


def test_an_id_used_again_for_another_message_is_refused(store: Store) -> None:
    s = greeted(store)
    grant = say(s, type="lease-request", id="r1", action="node-restart", subject="x",
                ttl_s=60)
    assert grant["type"] == "lease-grant"
    assert say(s, type="lease-release", id="r1", lease=grant["lease"])["reason"] == \
        "id r1 was already used for another message"
    assert say(s, type="lease-request", id="r1", action="node-restart", subject="x",
               ttl_s=60) == grant


def test_a_refused_message_is_not_kept_and_its_correction_is_decided(
        store: Store) -> None:
    s = greeted(store)
    assert say(s, type="lease-request", id="e1", action="node-restart", subject="x",
               ttl_s=0)["type"] == "error"
    assert say(s, type="lease-request", id="e1", action="node-restart", subject="x",
               ttl_s=60)["type"] == "lease-grant"


def test_one_disruptive_action_per_host_at_a_time(store: Store) -> None:
    s = greeted(store)
    first = say(s, type="lease-request", id="r1", action="node-restart", subject="x",
                ttl_s=60)
    second = say(s, type="lease-request", id="r2", action="failover-service", subject="y",
                 ttl_s=60)
    assert first["type"] == "lease-grant" and second["type"] == "lease-deny"
    assert f"already holds lease {first['lease']}" in second["reason"]


def test_a_renewal_meets_maintenance_group_and_lifetime(store: Store) -> None:
    clock = FakeClock()
    a = greeted(store, "mx0", clock)
    lease = say(a, type="lease-request", id="r1", action="node-restart", subject="x",
                ttl_s=3600)["lease"]
    store.run(lambda tx: tx.set_maintenance("mail", True, 0.0))
    denied = say(a, type="lease-renew", id="n1", lease=lease, ttl_s=60)
    assert denied["type"] == "lease-deny" and "maintenance" in denied["reason"]
    assert store.run(lambda tx: tx.held_by("mx0", clock.now)) == []  # given back
    store.run(lambda tx: tx.set_maintenance("mail", False, 0.0))
    # moved to another group: its old group's lease is not renewed
    lease = say(a, type="lease-request", id="r2", action="node-restart", subject="x",
                ttl_s=3600)["lease"]
    store.run(lambda tx: tx.put_host(HostRecord("mx0", "web", "mail", KEY, 0.0, None)))
    assert "now in group web" in say(a, type="lease-renew", id="n2", lease=lease,
                                     ttl_s=60)["reason"]
    # a lease renewed past its longest life is given back
    b = greeted(store, "mx1", clock)
    lease = say(b, type="lease-request", id="r1", action="node-restart", subject="x",
                ttl_s=3600)["lease"]
    for k in range(3):
        clock.now += 3000
        assert say(b, type="lease-renew", id=f"n{k}", lease=lease,
                   ttl_s=3600)["type"] == "lease-grant"
    clock.now += 3000
    assert "longest life" in say(b, type="lease-renew", id="n9", lease=lease,
                                 ttl_s=3600)["reason"]


def test_old_messages_and_ended_leases_are_pruned(store: Store) -> None:
    clock = FakeClock()
    s = greeted(store, "mx0", clock)
    lease = say(s, type="lease-request", id="r1", action="node-restart", subject="x",
                ttl_s=60)["lease"]
    say(s, type="lease-release", id="x1", lease=lease)
    clock.now += 31 * 86400
    greeted(store, "mx1", clock)  # a session's hello prunes
    assert [m[1] for m in store.run(lambda tx: tx.messages("mx0"))] == []
    assert store.run(lambda tx: tx.leases()) == []


def _fire(store: Store, host: str, severity: str = "critical", *,
          trusted: bool = True, kind: str = "finding", clock: FakeClock | None = None) -> None:
    s = greeted(store, host, clock)
    assert say(s, type=kind, id=f"{kind}-{host}-{severity}", problem="fs-error",
               subject="sda1", severity=severity, trusted=trusted)["type"] == "ack"


def test_a_storm_refuses_leases_and_pages_once(store: Store) -> None:
    # 20 mail hosts, storm at over 30%: 6 hosts firing is not a storm, 7 is
    for i in range(1, 7):
        _fire(store, f"mx{i}")
    _fire(store, "mx7", "warning")  # below the storm's severity: not counted
    _fire(store, "mx8", trusted=False)  # untrusted (a forged kernel line): not counted
    s = greeted(store, "mx0")
    first = say(s, type="lease-request", id="r1", action="node-restart", subject="x",
                ttl_s=60)
    assert first["type"] == "lease-grant"
    say(s, type="lease-release", id="x1", lease=first["lease"])
    _fire(store, "mx9")  # 7 of 20: over 30%
    for n in range(3):
        denied = say(s, type="lease-request", id=f"r{n + 2}", action="node-restart",
                     subject="x", ttl_s=60)
        assert denied["type"] == "lease-deny" and "storm in group mail: 7 of 20" in \
            denied["reason"]
    alerts = store.run(lambda tx: tx.alerts())
    assert [(a[1], a[2]) for a in alerts] == [("storm", "mail")]  # paged once
    # the storm passes: one host's finding resolves, leases are granted again
    _fire(store, "mx9", kind="resolved")
    assert say(s, type="lease-request", id="r9", action="node-restart", subject="x",
               ttl_s=60)["type"] == "lease-grant"
    assert store.run(lambda tx: tx.alerts())[0][6] is not None  # the storm alert ended


def test_a_dependency_failing_on_several_hosts_is_one_incident_and_its_clients_hold(
        store: Store) -> None:
    store.run(lambda tx: tx.put_host(HostRecord("nas-a1", "storage", "storage", KEY, 0.0,
                                                None)))

    def nfs(host: str, kind: str = "finding", n: int = 0) -> None:
        s = greeted(store, host)
        assert say(s, type=kind, id=f"{kind}-{n}", problem="nfs-not-responding",
                   subject="nas-a1", severity="error")["type"] == "ack"

    nfs("mx1")
    alone = say(greeted(store, "mx1"), type="lease-request", id="r1",
                action="node-restart", subject="mx1", ttl_s=60)
    assert alone["type"] == "lease-grant"  # one host's view: no incident yet
    say(greeted(store, "mx1"), type="lease-release", id="x1", lease=alone["lease"])
    for host in ("mx2", "mx3"):
        nfs(host)
    alerts = store.run(lambda tx: tx.alerts())
    assert [(a[1], a[2]) for a in alerts] == [("incident", "nfs-not-responding:nas-a1")]
    assert "on 2 hosts (mx1, mx2)" in alerts[0][3]  # one alert when it began, not three
    held = say(greeted(store, "mx2"), type="lease-request", id="r2", action="node-restart",
               subject="mx2", ttl_s=60)
    assert held["type"] == "lease-deny" and "dependency incident" in held["reason"]
    # the dependency's own agent acts
    assert say(greeted(store, "nas-a1"), type="lease-request", id="r1", action="failover-service",
               subject="nfs-server", ttl_s=60)["type"] == "lease-grant"
    # the incident passes as the clients' findings resolve
    for n, host in enumerate(("mx1", "mx2")):
        nfs(host, "resolved", n)
    assert store.run(lambda tx: tx.alerts())[0][6] is not None
    assert store.run(lambda tx: tx.incidents(("nfs-not-responding",), 2)) == []


def test_an_agents_page_becomes_one_alert_until_its_finding_resolves(
        store: Store) -> None:
    s = greeted(store, "mx0")
    page = {"type": "plan", "action": "page", "subject": "oncall", "problem": "fs-error",
            "finding_subject": "sda1", "execute": True,
            "summary": "page: fs-error sda1 on mx0 \u001b[31m"}
    assert say(s, id="p1", **{k: v for k, v in page.items() if k != "type"},
               type="plan")["type"] == "ack"
    assert say(s, id="p2", **{k: v for k, v in page.items() if k != "type"},
               type="plan")["type"] == "ack"
    dry = {**page, "execute": False}
    say(s, id="p3", **{k: v for k, v in dry.items() if k != "type"}, type="plan")
    alerts = store.run(lambda tx: tx.alerts())
    assert [(a[1], a[2]) for a in alerts] == [("page", "mx0/fs-error/sda1")]  # once
    assert "\u001b" not in alerts[0][3] and alerts[0][3].startswith("page from mx0: ")
    say(s, type="resolved", id="r1", problem="fs-error", subject="sda1")
    assert store.run(lambda tx: tx.alerts())[0][6] is not None
