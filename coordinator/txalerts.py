"""What a store's transaction runs on, and the alerts' and approvals' part of it
(coordinator/store.py's Tx is the rest: hosts, messages, leases, findings)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    """What Tx reads from a statement: sqlite3's cursor and psycopg's alike."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    """A connection as Tx uses it: SQLite's dialect with `?` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class AlertsTx:
    """Alerts for a person, and the approvals a person gives."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def raise_alert(self, kind: str, scope: str, text: str, now: float, *,
                    group: str = "") -> int | None:
        """A new alert for `group`'s contacts, unless one of this kind and scope is open
        (a person is told once); its id, or None when one was open."""
        open_ = self._db.execute("SELECT id FROM alerts WHERE kind = ? AND scope = ? AND "
                                 "ended IS NULL", (kind, scope)).fetchone()
        if open_:
            return None
        return int(self._db.execute("INSERT INTO alerts (kind, scope, text, raised, grp) "
                                    "VALUES (?,?,?,?,?) RETURNING id",
                                    (kind, scope, text, now, group)).fetchone()[0])

    def due(self, now: float) -> list[dict[str, Any]]:
        """Open, unacknowledged alerts not delivered to their current contact, whose
        next try has come."""
        rows = self._db.execute(
            "SELECT id, kind, scope, text, raised, grp, contact, attempts FROM alerts "
            "WHERE ended IS NULL AND acked IS NULL AND delivered IS NULL AND next_try <= ? "
            "ORDER BY id", (now,))
        keys = ("alert", "kind", "scope", "text", "raised", "group", "contact", "attempts")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def delivered(self, alert_id: int, now: float) -> None:
        self._db.execute("UPDATE alerts SET delivered = ?, last_error = '' WHERE id = ?",
                         (now, alert_id))

    def not_delivered(self, alert_id: int, next_try: float, reason: str) -> None:
        """`reason` is others' text: a NUL (PostgreSQL's text has none) is kept as U+FFFD."""
        self._db.execute("UPDATE alerts SET attempts = attempts + 1, next_try = ?, "
                         "last_error = ? WHERE id = ?",
                         (next_try, reason[:500].replace("\0", "\ufffd"), alert_id))

    def escalate_unacked(self, before: float, now: float) -> list[int]:
        """Alerts delivered before `before` and still not acknowledged: to the next
        contact (delivered again from scratch); their ids."""
        ids = [r[0] for r in self._db.execute(
            "SELECT id FROM alerts WHERE ended IS NULL AND acked IS NULL AND "
            "delivered IS NOT NULL AND delivered < ?", (before,))]
        for alert_id in ids:
            self._db.execute("UPDATE alerts SET contact = contact + 1, delivered = NULL, "
                             "attempts = 0, next_try = ? WHERE id = ?", (now, alert_id))
        return ids

    def end_alerts(self, kind: str, scope: str, now: float) -> None:
        self._db.execute("UPDATE alerts SET ended = ? WHERE kind = ? AND scope = ? AND "
                         "ended IS NULL", (now, kind, scope))

    def alerts(self) -> list[tuple[int, str, str, str, float, float | None, float | None]]:
        """(id, kind, scope, text, raised, acked, ended), newest first."""
        return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in self._db.execute(
            "SELECT id, kind, scope, text, raised, acked, ended FROM alerts ORDER BY id DESC")]

    def ack(self, alert_id: int, now: float) -> bool:
        return self._db.execute("UPDATE alerts SET acked = ? WHERE id = ? AND acked IS NULL",
                                (now, alert_id)).rowcount == 1

    def approval(self, host: str, action: str, subject: str) -> tuple[int, float | None] | None:
        """(id, approved) of the newest approval not yet used for this host, action and
        subject (approved None: a person has not answered yet)."""
        row = self._db.execute(
            "SELECT id, approved FROM approvals WHERE host = ? AND action = ? AND "
            "subject = ? AND used IS NULL ORDER BY id DESC LIMIT 1",
            (host, action, subject)).fetchone()
        return (int(row[0]), row[1]) if row else None

    def waiting_approval(self, host: str) -> int | None:
        """The id of the host's request a person has not answered yet, if any."""
        row = self._db.execute("SELECT id FROM approvals WHERE host = ? AND approved IS NULL "
                               "AND used IS NULL ORDER BY id LIMIT 1", (host,)).fetchone()
        return int(row[0]) if row else None

    def ask_approval(self, host: str, group: str, action: str, subject: str,
                     now: float) -> int:
        row = self._db.execute(
            "INSERT INTO approvals (host, grp, action, subject, asked) VALUES (?,?,?,?,?) "
            "RETURNING id", (host, group, action, subject, now)).fetchone()
        return int(row[0])

    def approve(self, approval_id: int, now: float) -> tuple[str, str, str] | None:
        """A person's yes to a waiting approval: its (host, action, subject), or None
        when there is no such approval waiting."""
        row = self._db.execute(
            "UPDATE approvals SET approved = ? WHERE id = ? AND approved IS NULL AND "
            "used IS NULL RETURNING host, action, subject", (now, approval_id)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def use_approval(self, approval_id: int, now: float) -> None:
        self._db.execute("UPDATE approvals SET used = ? WHERE id = ?", (now, approval_id))

    def approvals(self) -> list[dict[str, Any]]:
        """Every approval, newest first."""
        keys = ("approval", "host", "group", "action", "subject", "asked", "approved",
                "used")
        rows = self._db.execute("SELECT id, host, grp, action, subject, asked, approved, "
                                "used FROM approvals ORDER BY id DESC")
        return [dict(zip(keys, r, strict=True)) for r in rows]
