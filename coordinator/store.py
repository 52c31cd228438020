"""Fleet state behind one interface: hosts, messages seen, leases, maintenance.

Every change runs in one transaction that begins by taking the store's write lock
(SQLite `BEGIN IMMEDIATE`), so two lease requests decided at the same instant are
decided one after the other: the second sees the first's lease. A message is recorded
with the reply it got in the same transaction as its effect, under its (host, id): the
same message again gets the same reply and has no second effect (at least once on the
wire, exactly once in the store). Schema migrations are numbered (MIGRATIONS) and run
in order at open; the version is kept in the store.

Two backends run the same Tx, the same SQL (SQLite's dialect, `?` placeholders): SQLite
here, the embedded store (`sqlite:///PATH`), and PostgreSQL for coordinators that share
one store (coordinator/pgstore.py). coordinator/stores.py opens the one a URL names.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from coordinator.txalerts import AlertsTx, Db

T = TypeVar("T")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: hosts, messages, leases, maintenance
        """CREATE TABLE hosts (name TEXT PRIMARY KEY, grp TEXT NOT NULL, role TEXT NOT NULL,
           pubkey TEXT NOT NULL, added REAL NOT NULL, last_seen REAL)""",
        """CREATE TABLE messages (host TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
           received REAL NOT NULL, body TEXT NOT NULL, reply TEXT NOT NULL,
           PRIMARY KEY (host, id))""",
        """CREATE TABLE leases (id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL,
           grp TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL,
           granted REAL NOT NULL, expires REAL NOT NULL, released REAL)""",
        "CREATE INDEX leases_active ON leases (grp, released, expires)",
        "CREATE TABLE maintenance (scope TEXT PRIMARY KEY, since REAL NOT NULL)",
    ),
    (  # 2: a digest of each message's content, to refuse an id used again for another one
        "ALTER TABLE messages ADD COLUMN digest TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX messages_received ON messages (received)",
        "CREATE INDEX leases_host ON leases (host, released, expires)",
    ),
    (  # 3: what each host has firing, and alerts for a person
        """CREATE TABLE firing (host TEXT NOT NULL, problem TEXT NOT NULL,
           subject TEXT NOT NULL, severity TEXT NOT NULL, since REAL NOT NULL,
           PRIMARY KEY (host, problem, subject))""",
        """CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
           scope TEXT NOT NULL, text TEXT NOT NULL, raised REAL NOT NULL,
           acked REAL, ended REAL)""",
        "CREATE INDEX alerts_open ON alerts (kind, scope, ended)",
    ),
    (  # 4: delivering alerts: to whom (the group's contacts, in order), when, how often
        "ALTER TABLE alerts ADD COLUMN grp TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE alerts ADD COLUMN contact INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE alerts ADD COLUMN delivered REAL",
        "ALTER TABLE alerts ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE alerts ADD COLUMN next_try REAL NOT NULL DEFAULT 0",
        "ALTER TABLE alerts ADD COLUMN last_error TEXT NOT NULL DEFAULT ''",
    ),
    (  # 5: actions a person must approve before their lease is granted
        """CREATE TABLE approvals (id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL,
           grp TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL,
           asked REAL NOT NULL, approved REAL, used REAL)""",
        "CREATE INDEX approvals_open ON approvals (host, action, subject, used)",
    ),
    (  # 6: a lease's storm check reads the severe findings only, and a group's size
        "CREATE INDEX firing_severity ON firing (severity, host)",
        "CREATE INDEX hosts_group ON hosts (grp)",
    ),
)
#: what a message's body may take in the store; a larger one is kept cut, with a mark
MAX_STORED_BODY = 64 * 1024
#: how long answered messages and ended leases are kept (the window in which the same
#: message sent again is recognised is this long)
RETENTION_S = 30 * 86400.0
PRUNE_BATCH = 1000


_LEASES = "SELECT id, host, grp, action, subject, granted, expires, released FROM leases"
_HOSTS = "SELECT name, grp, role, pubkey, added, last_seen FROM hosts"


class StoreError(Exception):
    """The store cannot be opened or written (its reason is for the operator)."""


@dataclass(frozen=True)
class HostRecord:
    name: str
    group: str
    role: str
    pubkey: str
    added: float
    last_seen: float | None


@dataclass(frozen=True)
class Lease:
    id: int
    host: str
    group: str
    action: str
    subject: str
    granted: float
    expires: float
    released: float | None

    def active(self, now: float) -> bool:
        return self.released is None and self.expires > now


class Tx(AlertsTx):
    """What one transaction may read and change (the one SQL of every backend); the
    alerts' and approvals' part is coordinator/txalerts.py."""

    def host(self, name: str) -> HostRecord | None:
        row = self._db.execute(_HOSTS + " WHERE name = ?", (name,)).fetchone()
        return HostRecord(*row) if row else None

    def hosts(self) -> list[HostRecord]:
        rows = self._db.execute(_HOSTS + " ORDER BY name").fetchall()
        return [HostRecord(*r) for r in rows]

    def put_host(self, host: HostRecord) -> None:
        self._db.execute(
            "INSERT INTO hosts (name, grp, role, pubkey, added, last_seen) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (name) DO UPDATE SET grp = excluded.grp, role = excluded.role, "
            "pubkey = excluded.pubkey", (host.name, host.group, host.role, host.pubkey,
                                         host.added, host.last_seen))

    def remove_host(self, name: str, now: float) -> bool:
        """The host leaves the fleet: its record and what it had firing go, its leases
        are given back; its messages stay (history). Whether it was known."""
        gone = self._db.execute("DELETE FROM hosts WHERE name = ?", (name,)).rowcount
        self._db.execute("DELETE FROM firing WHERE host = ?", (name,))
        self._db.execute("UPDATE leases SET released = ? WHERE host = ? AND released IS NULL",
                         (now, name))
        return gone == 1

    def seen(self, host: str, now: float) -> None:
        self._db.execute("UPDATE hosts SET last_seen = ? WHERE name = ?", (now, host))

    def earlier(self, host: str, msg_id: str) -> tuple[str, dict[str, Any]] | None:
        """(digest, reply) of the message this host sent with this id before, if any."""
        row = self._db.execute("SELECT digest, reply FROM messages WHERE host = ? AND id = ?",
                               (host, msg_id)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def record(self, host: str, msg_id: str, kind: str, body: dict[str, Any], *,
               digest: str, reply: dict[str, Any], now: float) -> None:
        text = json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))
        if len(text) > MAX_STORED_BODY:
            text = json.dumps({"cut": True, "bytes": len(text.encode())})
        self._db.execute("INSERT INTO messages (host, id, type, received, body, reply, digest) "
                         "VALUES (?,?,?,?,?,?,?)",
                         (host, msg_id, kind, now, text,
                          json.dumps(reply, sort_keys=True, separators=(",", ":")), digest))

    def prune(self, now: float) -> int:
        """Drop a batch of answered messages and ended leases older than RETENTION_S."""
        before = now - RETENTION_S
        gone = self._db.execute(
            "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages "
            "WHERE received < ? LIMIT ?)", (before, PRUNE_BATCH)).rowcount
        gone += self._db.execute(
            "DELETE FROM leases WHERE id IN (SELECT id FROM leases WHERE granted < ? AND "
            "(released IS NOT NULL OR expires <= ?) LIMIT ?)",
            (before, now, PRUNE_BATCH)).rowcount
        return gone

    def messages(self, host: str | None = None) -> list[tuple[str, str, str, float, str]]:
        """(host, id, type, received, body) in the order received."""
        sql = "SELECT host, id, type, received, body FROM messages"
        args: tuple[str, ...] = ()
        if host is not None:
            sql, args = sql + " WHERE host = ?", (host,)
        return [(r[0], r[1], r[2], r[3], r[4])
                for r in self._db.execute(sql + " ORDER BY rowid", args)]

    def leases(self, group: str | None = None) -> list[Lease]:
        sql = _LEASES
        args: tuple[str, ...] = ()
        if group is not None:
            sql, args = sql + " WHERE grp = ?", (group,)
        return [Lease(*r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def active_leases(self, group: str, now: float) -> list[Lease]:
        """The group's leases neither released nor expired (read through its index)."""
        rows = self._db.execute(
            _LEASES + " WHERE grp = ? AND released IS NULL AND expires > ? ORDER BY id",
            (group, now))
        return [Lease(*r) for r in rows]

    def held_by(self, host: str, now: float) -> list[Lease]:
        rows = self._db.execute(
            _LEASES + " WHERE host = ? AND released IS NULL AND expires > ? ORDER BY id",
            (host, now))
        return [Lease(*r) for r in rows]

    def grant(self, host: str, group: str, action: str, subject: str, *, now: float,
              ttl_s: float) -> Lease:
        lease_id = int(self._db.execute(
            "INSERT INTO leases (host, grp, action, subject, granted, expires) "
            "VALUES (?,?,?,?,?,?) RETURNING id",
            (host, group, action, subject, now, now + ttl_s)).fetchone()[0])
        return Lease(lease_id, host, group, action, subject, now, now + ttl_s, None)

    def lease(self, lease_id: int) -> Lease | None:
        row = self._db.execute(_LEASES + " WHERE id = ?", (lease_id,)).fetchone()
        return Lease(*row) if row else None

    def renew(self, lease_id: int, expires: float) -> None:
        self._db.execute("UPDATE leases SET expires = ? WHERE id = ?", (expires, lease_id))

    def release(self, lease_id: int, now: float) -> None:
        self._db.execute("UPDATE leases SET released = ? WHERE id = ? AND released IS NULL",
                         (now, lease_id))

    def fire(self, host: str, problem: str, subject: str, severity: str, now: float) -> None:
        self._db.execute("INSERT INTO firing (host, problem, subject, severity, since) "
                         "VALUES (?,?,?,?,?) ON CONFLICT (host, problem, subject) DO UPDATE "
                         "SET severity = excluded.severity", (host, problem, subject,
                                                              severity, now))

    def resolve(self, host: str, problem: str, subject: str) -> None:
        self._db.execute("DELETE FROM firing WHERE host = ? AND problem = ? AND subject = ?",
                         (host, problem, subject))

    def hosts_firing(self, group: str, severities: tuple[str, ...]) -> list[str]:
        """The group's hosts with a finding of one of `severities` firing."""
        marks = ",".join("?" * len(severities))
        rows = self._db.execute(
            f"SELECT DISTINCT f.host FROM firing f JOIN hosts h ON h.name = f.host "  # noqa: S608
            f"WHERE h.grp = ? AND f.severity IN ({marks}) ORDER BY f.host",
            (group, *severities))
        return [r[0] for r in rows]

    def sharing(self, problem: str, subject: str) -> list[str]:
        """The hosts with this (problem, subject) firing."""
        return [r[0] for r in self._db.execute(
            "SELECT host FROM firing WHERE problem = ? AND subject = ? ORDER BY host",
            (problem, subject))]

    def incidents(self, problems: tuple[str, ...], min_hosts: int
                  ) -> list[tuple[str, str, list[str]]]:
        """(problem, subject, hosts) firing on `min_hosts` hosts or more, of `problems`."""
        if not problems:
            return []
        marks = ",".join("?" * len(problems))
        rows = self._db.execute(
            f"SELECT problem, subject FROM firing WHERE problem IN ({marks}) "  # noqa: S608
            "GROUP BY problem, subject HAVING count(DISTINCT host) >= ? "
            "ORDER BY problem, subject", (*problems, min_hosts)).fetchall()
        return [(r[0], r[1], self.sharing(r[0], r[1])) for r in rows]

    def firing(self) -> list[tuple[str, str, str, str, float]]:
        """(host, problem, subject, severity, since) of everything firing."""
        return [(r[0], r[1], r[2], r[3], r[4]) for r in self._db.execute(
            "SELECT host, problem, subject, severity, since FROM firing "
            "ORDER BY host, problem, subject")]

    def firing_of(self, host: str) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT problem, subject FROM firing WHERE host = ? ORDER BY problem, subject",
            (host,))]

    def group_size(self, group: str) -> int:
        return int(self._db.execute("SELECT count(*) FROM hosts WHERE grp = ?",
                                    (group,)).fetchone()[0])

    def maintenance(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT scope FROM maintenance ORDER BY scope")]

    def set_maintenance(self, scope: str, on: bool, now: float) -> None:
        if on:
            self._db.execute("INSERT INTO maintenance (scope, since) VALUES (?, ?) "
                             "ON CONFLICT (scope) DO NOTHING", (scope, now))
        else:
            self._db.execute("DELETE FROM maintenance WHERE scope = ?", (scope,))


class SqliteStore:
    """The embedded store: one SQLite file, opened per process (a session, a command)."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: {exc}") from exc

    def _migrate(self) -> None:
        with self._transaction():
            migrate(self._db)

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("SELECT max(version) FROM schema_version").fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def run(self, work: Callable[[Tx], T]) -> T:
        """`work` in one write transaction: all of it or none of it is kept."""
        try:
            with self._transaction():
                return work(Tx(self._db))
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def close(self) -> None:
        self._db.close()


def migrate(db: Db, ddl: Callable[[str], str] = str) -> None:
    """The schema brought to the last of MIGRATIONS, each statement as `ddl` writes it
    for the backend. Run inside the caller's write transaction: two processes opening
    one store at once migrate it once."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    have = db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
    if have > len(MIGRATIONS):
        raise StoreError(f"the store is at schema {have}, newer than this "
                         f"coordinator's {len(MIGRATIONS)}: upgrade it")
    for version in range(have + 1, len(MIGRATIONS) + 1):
        for statement in MIGRATIONS[version - 1]:
            db.execute(ddl(statement))
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
