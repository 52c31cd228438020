"""An alert reaches a real SMTP server: Debian postfix, private to the test, delivering
to a local Maildir. The mail names the alert and how to acknowledge it; a line an agent
wrote cannot add a header."""

from __future__ import annotations

from email import message_from_bytes, policy
from pathlib import Path

import pytest

from coordinator.cli import EXIT_OK, EXIT_REFUSED, main
from coordinator.store import SqliteStore
from tests.integration._mailservers import (
    MAILBOX_DOMAIN,
    free_port,
    running_postfix,
    self_signed_cert,
)
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(f"""
[store]
url = "sqlite:///{tmp_path / 'fleet.db'}"
[notifiers.oncall]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
from = "coordinator@nodewarden-test.localdomain"
to = ["oncall@{MAILBOX_DOMAIN}"]
[groups.storage]
contacts = ["oncall"]
""")
    return path


def test_an_alert_is_mailed_and_counts_as_delivered(tmp_path: Path) -> None:
    with self_signed_cert() as tls, running_postfix(tls, mailbox=True) as postfix:
        config = _config(tmp_path, postfix.port)
        store = SqliteStore(tmp_path / "fleet.db")
        alert = store.run(lambda tx: tx.raise_alert(
            "incident", "nfs-not-responding:nas-a1\r\nBcc: evil@example.net",
            "incident: nfs-not-responding nas-a1 on 3 hosts", 1.0, group="storage"))
        assert main(["--config", str(config), "watch"]) == EXIT_OK
        assert postfix.mailbox is not None
        new = postfix.mailbox / "new"
        mails = poll(lambda: list(new.glob("*")) or None if new.exists() else None, 30)
        assert mails and len(mails) == 1
        mail = message_from_bytes(mails[0].read_bytes(), policy=policy.default)
        assert str(mail["Subject"]).strip().startswith(
            "[nodewarden] incident nfs-not-responding:nas-a1??Bcc")
        assert mail["Bcc"] is None  # the agent's CR LF did not make a header
        body = mail.get_body().get_content()  # type: ignore[union-attr]
        assert f"nodewarden-coordinator ack {alert}" in body and "on 3 hosts" in body
        assert store.run(lambda tx: tx._db.execute(
            "SELECT delivered FROM alerts").fetchone()[0]) is not None


def test_a_mail_server_that_is_not_there_is_not_a_delivery(tmp_path: Path) -> None:
    config = _config(tmp_path, free_port())
    store = SqliteStore(tmp_path / "fleet.db")
    store.run(lambda tx: tx.raise_alert("storm", "storage", "storm", 1.0, group="storage"))
    assert main(["--config", str(config), "watch"]) == EXIT_REFUSED
    row = store.run(lambda tx: tx._db.execute(
        "SELECT delivered, last_error FROM alerts").fetchone())
    assert row[0] is None and "email failed" in row[1]
