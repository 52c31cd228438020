"""A person's approval before a disruptive lease ([groups.NAME] approve, `approve ID`),
on each real store: the first request waits and tells the group's contacts once, the
approval lets the next request through once, an old approval is asked again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.schema import parse_toml
from coordinator.cli import EXIT_OK, EXIT_REFUSED, main
from coordinator.session import Session
from coordinator.settings import CoordinatorSettings, GroupSettings, parse_settings
from coordinator.store import HostRecord, SqliteStore
from coordinator.stores import Store
from tests.unit.test_coordinator_session import FakeClock, store  # noqa: F401 (fixture)

SETTINGS = CoordinatorSettings(groups={"mail": GroupSettings(
    max_disruptive=2, approve=("node-restart",), contacts=())})


def greeted(s: Store, host: str, clock: FakeClock) -> Session:
    record = s.run(lambda tx: tx.host(host))
    assert record is not None
    session = Session(record, s, SETTINGS, clock)
    assert say(session, type="hello", id=f"h{clock.now}", proto=1)["type"] == "ack"
    return session


def say(s: Session, **msg: Any) -> dict[str, Any]:
    return s.answer(json.dumps(msg).encode() + b"\n")


def ask(s: Session, msg_id: str, action: str = "node-restart") -> dict[str, Any]:
    return say(s, type="lease-request", id=msg_id, action=action, subject="host", ttl_s=600)


def test_a_lease_waits_for_a_person_then_is_granted_once(store: Store) -> None:  # noqa: F811
    clock = FakeClock()
    s = greeted(store, "mx1", clock)
    first = ask(s, "r1")
    assert first["type"] == "lease-deny" and "awaiting a person's approval" in first["reason"]
    [pending] = store.run(lambda tx: tx.approvals())
    assert f"approve {pending['approval']}" in first["reason"]
    assert ask(s, "r2")["type"] == "lease-deny"  # still waiting: no second approval asked
    assert len(store.run(lambda tx: tx.approvals())) == 1
    alerts = [a for a in store.run(lambda tx: tx.alerts()) if a[1] == "approval"]
    assert len(alerts) == 1 and "mx1 asks to run node-restart" in alerts[0][3]
    # a failover needs no approval in this group
    assert ask(s, "f1", action="failover")["type"] == "lease-grant"
    [failover] = store.run(lambda tx: tx.leases())
    store.run(lambda tx: tx.release(failover.id, clock.now))
    assert store.run(lambda tx: tx.approve(pending["approval"], clock.now)) == \
        ("mx1", "node-restart", "host")
    granted = ask(s, "r3")
    assert granted["type"] == "lease-grant"
    store.run(lambda tx: tx.release(granted["lease"], clock.now))
    again = ask(s, "r4")  # the approval was used: the next one waits again
    assert again["type"] == "lease-deny" and "awaiting" in again["reason"]


def test_an_old_approval_is_asked_again(store: Store) -> None:  # noqa: F811
    clock = FakeClock()
    s = greeted(store, "mx2", clock)
    ask(s, "r1")
    [pending] = store.run(lambda tx: tx.approvals())
    store.run(lambda tx: tx.approve(pending["approval"], clock.now))
    clock.now += SETTINGS.approval_valid_s + 1
    late = ask(s, "r2")
    assert late["type"] == "lease-deny" and "awaiting" in late["reason"]
    assert len(store.run(lambda tx: tx.approvals())) == 2


def test_an_approval_does_not_pass_the_other_guards(store: Store) -> None:  # noqa: F811
    clock = FakeClock()
    s = greeted(store, "mx3", clock)
    ask(s, "r1")
    [pending] = store.run(lambda tx: tx.approvals())
    store.run(lambda tx: tx.approve(pending["approval"], clock.now))
    store.run(lambda tx: tx.set_maintenance("mail", True, clock.now))
    assert "maintenance" in ask(s, "r2")["reason"]
    store.run(lambda tx: tx.set_maintenance("mail", False, clock.now))
    assert ask(s, "r3")["type"] == "lease-grant"  # still good: it was not used


def test_approve_from_the_command_line(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "fleet.db"}"\n'
                      '[serve]\nsocket = ""\n'
                      '[groups.mail]\napprove = ["node-restart"]\n')
    db = SqliteStore(tmp_path / "fleet.db")
    db.run(lambda tx: tx.put_host(HostRecord("mx1", "mail", "mail", "k", 0.0, None)))
    record = db.run(lambda tx: tx.host("mx1"))
    assert record is not None
    session = Session(record, db, SETTINGS, FakeClock())
    say(session, type="hello", id="h", proto=1)
    ask(session, "r1")
    assert main(["--config", str(config), "approvals", "--json"]) == EXIT_OK
    [row] = json.loads(capsys.readouterr().out)["approvals"]
    assert row["host"] == "mx1" and row["approved"] is None
    assert main(["--config", str(config), "approve", str(row["approval"])]) == EXIT_OK
    assert f"approved {row['approval']}: mx1 may run node-restart" in capsys.readouterr().out
    assert main(["--config", str(config), "approve", str(row["approval"])]) == EXIT_REFUSED
    assert "no approval" in capsys.readouterr().err
    open_alerts = [a for a in db.run(lambda tx: tx.alerts()) if a[6] is None]
    assert open_alerts == []  # the approval's alert ended with it
    assert ask(session, "r2")["type"] == "lease-grant"
    db.close()


def test_approve_lists_only_action_names() -> None:
    raw, _ = parse_toml(b'[groups.mail]\napprove = ["Node Restart!"]\n', "c.toml")
    assert raw is not None
    _, errors = parse_settings(raw, "c.toml")
    assert any("groups.mail.approve" in str(e) for e in errors)


def test_one_request_per_host_waits_at_a_time(store: Store) -> None:  # noqa: F811
    """A hostile agent changing the subject on each request raises one alert, not one
    per subject."""
    clock = FakeClock()
    s = greeted(store, "mx4", clock)
    for n in range(5):
        reply = say(s, type="lease-request", id=f"r{n}", action="node-restart",
                    subject=f"subject {n}: approve 999", ttl_s=600)
        assert reply["type"] == "lease-deny"
    assert len(store.run(lambda tx: tx.approvals())) == 1
    alerts = [a for a in store.run(lambda tx: tx.alerts()) if a[1] == "approval"]
    assert len(alerts) == 1 and "'subject 0: approve 999'" in alerts[0][3]
    assert "earlier request first" in reply["reason"]
