"""Alerts reach a person (coordinator/notify.py, `watch`): delivered only when the
notifier confirms it (a real HTTP server on loopback, a real command), tried again when
it does not, and sent to the next contact when nobody acknowledges it in time."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import EXIT_OK, EXIT_REFUSED, main
from coordinator.store import SqliteStore
from coordinator.stores import open_store


class Receiver:
    """A webhook receiver on 127.0.0.1 that records what it got and answers `status`."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers["Content-Length"])
                outer.got.append(json.loads(self.rfile.read(size)))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.realparts)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store of each backend: SQLite in a file, PostgreSQL in a database of its own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _config(tmp_path: Path, receiver: Receiver, store_url: str = "") -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(f"""
[store]
url = "{store_url or f"sqlite:///{tmp_path / 'fleet.db'}"}"
[alerts]
ack_within_s = 60
[notifiers.hook]
kind = "webhook"
url = "{receiver.url}"
[notifiers.pager]
kind = "command"
argv = ["/bin/sh", "-c", "cat >> {tmp_path / 'paged'}"]
[groups.mail]
contacts = ["hook", "pager"]
""")
    return path


def test_an_alert_is_delivered_then_escalated_until_acknowledged(
        tmp_path: Path, receiver: Receiver, store_url: str) -> None:
    config = _config(tmp_path, receiver, store_url)
    store = open_store(store_url)
    alert = store.run(lambda tx: tx.raise_alert("storm", "mail", "storm in group mail", 1.0,
                                                group="mail"))
    assert main(["--config", str(config), "watch"]) == EXIT_OK
    assert [(a["alert"], a["kind"], a["contact"]) for a in receiver.got] == [
        (alert, "storm", "hook")]
    assert main(["--config", str(config), "watch"]) == EXIT_OK
    assert len(receiver.got) == 1  # delivered once
    # nobody acknowledged it within ack_within_s: the next contact is told
    store.run(lambda tx: tx._db.execute("UPDATE alerts SET delivered = delivered - 120"))
    assert main(["--config", str(config), "watch"]) == EXIT_OK
    paged = json.loads((tmp_path / "paged").read_text())
    assert paged["alert"] == alert and paged["contact"] == "pager"
    assert main(["--config", str(config), "ack", str(alert)]) == EXIT_OK
    store.run(lambda tx: tx._db.execute("UPDATE alerts SET delivered = delivered - 120"))
    assert main(["--config", str(config), "watch"]) == EXIT_OK
    assert (tmp_path / "paged").read_text().count('"alert"') == 1  # acknowledged: no more


def test_a_refused_delivery_is_not_counted_and_is_tried_again(
        tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str],
        store_url: str) -> None:
    config = _config(tmp_path, receiver, store_url)
    store = open_store(store_url)
    store.run(lambda tx: tx.raise_alert("silent", "mx1", "host mx1 is silent", 1.0,
                                        group="mail"))
    receiver.status = 500
    assert main(["--config", str(config), "watch"]) == EXIT_REFUSED
    assert "NOT DELIVERED" in capsys.readouterr().out and "answered 500" in \
        store.run(lambda tx: tx._db.execute("SELECT last_error FROM alerts").fetchone()[0])
    assert main(["--config", str(config), "watch"]) == EXIT_OK  # not yet time to try again
    assert len(receiver.got) == 1
    receiver.status = 200
    store.run(lambda tx: tx._db.execute("UPDATE alerts SET next_try = 0"))
    assert main(["--config", str(config), "watch"]) == EXIT_OK
    assert len(receiver.got) == 2
    assert store.run(lambda tx: tx._db.execute(
        "SELECT delivered FROM alerts").fetchone()[0]) is not None


def test_an_alert_without_contacts_says_so(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "fleet.db"}"\n')
    SqliteStore(tmp_path / "fleet.db").run(
        lambda tx: tx.raise_alert("storm", "web", "storm", 1.0, group="web"))
    assert main(["--config", str(config), "watch"]) == EXIT_REFUSED
    assert "has no contacts" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[groups.mail]\ncontacts = ['nobody']\n", "groups.mail.contacts", "not a notifier"),
    ("[notifiers.x]\nkind = 'webhook'\nurl = 'ftp://x'\n", "notifiers.x.url", "http"),
    ("[notifiers.x]\nkind = 'command'\nargv = ['page']\n", "notifiers.x.argv", "absolute"),
    ("[notifiers.x]\nkind = 'pigeon'\n", "notifiers.x.kind", "must be one of"),
])
def test_bad_notifier_configuration_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                text: str, key: str, reason: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert f"{key}: " in err and reason in err


def test_a_store_that_cannot_be_written_is_told_straight_away(
        tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = tmp_path / "c.toml"
    config.write_text(f"""
[store]
url = "sqlite:///{blocker}/fleet.db"
[notifiers.hook]
kind = "webhook"
url = "{receiver.url}"
[default_group]
contacts = ["hook"]
""")
    assert main(["--config", str(config), "watch"]) == 3
    assert [(a["kind"], a["scope"]) for a in receiver.got] == [("store", "coordinator")]
    assert "cannot write its store" in receiver.got[0]["text"]
    assert "store alert to hook: delivered" in capsys.readouterr().err
    assert main(["--config", str(config), "status"]) == 3  # only watch tells a person
    assert len(receiver.got) == 1
