"""One agent's session: the lines it sends, the replies it gets (docs/protocol.md).

The session's host is what sshd's forced command says (`session --host NAME`): the key
is the identity. A message that claims another host is refused; group and role are the
store's (set by `keys add`), never what a message says. Each message is answered once,
in order; the same id again gets the same reply with no second effect (coordinator/
store.py). Bad input gets an `error` naming the problem and the session goes on, except
a wrong protocol version, which ends it after the reply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from agent.report.wire import (
    AGENT_TYPES,
    MAX_LINE_BYTES,
    PROTO,
    LineTooLong,
    Message,
    WireError,
    decode,
)
from coordinator.settings import CoordinatorSettings
from coordinator.store import HostRecord, SqliteStore, Tx

#: disruptive actions need a lease; their names are the agent's (remediations/)
MAX_NAME = 64
MAX_SUBJECT = 256


def error(msg_id: str | None, reason: str) -> dict[str, Any]:
    return {"type": "error", "id": msg_id, "reason": reason}


def ack(msg_id: str) -> dict[str, Any]:
    return {"type": "ack", "id": msg_id}


class Session:
    """The coordinator's side of one agent's connection."""

    def __init__(self, host: HostRecord, store: SqliteStore, settings: CoordinatorSettings,
                 clock: Callable[[], float]) -> None:
        self.host = host
        self._store = store
        self._settings = settings
        self._clock = clock
        self.greeted = False
        #: set when the session must end after the last reply
        self.ended = False

    def answer(self, line: bytes | LineTooLong) -> dict[str, Any]:
        """The reply to one line."""
        if isinstance(line, LineTooLong):
            return error(None, f"line of {line.size} bytes is over the {MAX_LINE_BYTES}-byte "
                         "limit")
        try:
            msg = decode(line, AGENT_TYPES)
        except WireError as exc:
            return error(exc.id, exc.reason)
        claimed = msg.get("host")
        if claimed is not None and claimed != self.host.name:
            return error(msg.id, f"this session speaks for host {self.host.name}; a message "
                         "cannot speak for another")
        if not self.greeted:
            return self._hello(msg)
        if msg.type == "hello":
            return error(msg.id, "hello was already said in this session")
        return self._store.run(lambda tx: self._once(tx, msg))

    def _hello(self, msg: Message) -> dict[str, Any]:
        if msg.type != "hello":
            return error(msg.id, "the first message of a session must be hello")
        proto = msg.get("proto")
        if proto != PROTO or isinstance(proto, bool):
            self.ended = True
            return error(msg.id, f"protocol version {proto!r} is not spoken here: this "
                         f"coordinator speaks {PROTO}")
        self.greeted = True
        return self._store.run(lambda tx: self._once(tx, msg))

    def _once(self, tx: Tx, msg: Message) -> dict[str, Any]:
        """The message's reply and effect, or the reply it already got."""
        host, now = self.host.name, self._clock()
        earlier = tx.reply_to(host, msg.id)
        if earlier is not None:
            return earlier
        tx.seen(host, now)
        reply = self._decide(tx, msg, now)
        tx.record(host, msg.id, msg.type, dict(msg.fields), reply=reply, now=now)
        return reply

    def _decide(self, tx: Tx, msg: Message, now: float) -> dict[str, Any]:
        if msg.type == "lease-request":
            return self._lease_request(tx, msg, now)
        if msg.type == "lease-renew":
            return self._lease_renew(tx, msg, now)
        if msg.type == "lease-release":
            return self._lease_release(tx, msg, now)
        return ack(msg.id)

    def _ttl(self, msg: Message) -> float | str:
        ttl = msg.get("ttl_s")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
            return "ttl_s must be a number of seconds"
        if not 1 <= ttl <= self._settings.max_ttl_s:
            return f"ttl_s must be between 1 and {self._settings.max_ttl_s:g}"
        return float(ttl)

    def _lease_request(self, tx: Tx, msg: Message, now: float) -> dict[str, Any]:
        action, subject, ttl = msg.get("action"), msg.get("subject"), self._ttl(msg)
        if not isinstance(action, str) or not 0 < len(action) <= MAX_NAME:
            return error(msg.id, f"action must be a name of 1-{MAX_NAME} characters")
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT:
            return error(msg.id, f"subject must be a string of 1-{MAX_SUBJECT} characters")
        if isinstance(ttl, str):
            return error(msg.id, ttl)
        host = tx.host(self.host.name) or self.host
        group = host.group
        scopes = set(tx.maintenance())
        if {host.name, group} & scopes:
            return _deny(msg.id, f"maintenance ({', '.join(sorted({host.name, group} & scopes))})")
        limit = self._settings.group(group).max_disruptive
        running = tx.active_leases(group, now)
        if len(running) >= limit:
            holders = ", ".join(sorted({lease.host for lease in running}))
            return _deny(msg.id, f"group {group} is at its limit of {limit} disruptive "
                         f"action(s) at once (held by {holders})" if running else
                         f"group {group} allows no disruptive action")
        lease = tx.grant(host.name, group, action, subject, now=now, ttl_s=ttl)
        return {"type": "lease-grant", "id": msg.id, "lease": lease.id,
                "expires": lease.expires}

    def _own_lease(self, tx: Tx, msg: Message) -> int | dict[str, Any]:
        lease_id = msg.get("lease")
        if isinstance(lease_id, bool) or not isinstance(lease_id, int):
            return error(msg.id, "lease must be the id a lease-grant gave")
        lease = tx.lease(lease_id)
        if lease is None or lease.host != self.host.name:
            return error(msg.id, f"lease {lease_id} is not one of {self.host.name}'s")
        return lease_id

    def _lease_renew(self, tx: Tx, msg: Message, now: float) -> dict[str, Any]:
        found, ttl = self._own_lease(tx, msg), self._ttl(msg)
        if isinstance(found, dict):
            return found
        if isinstance(ttl, str):
            return error(msg.id, ttl)
        lease = tx.lease(found)
        if lease is None or not lease.active(now):
            return _deny(msg.id, f"lease {found} has expired or was released: ask again")
        tx.renew(found, now + ttl)
        return {"type": "lease-grant", "id": msg.id, "lease": found, "expires": now + ttl}

    def _lease_release(self, tx: Tx, msg: Message, now: float) -> dict[str, Any]:
        found = self._own_lease(tx, msg)
        if isinstance(found, dict):
            return found
        tx.release(found, now)
        return ack(msg.id)


def _deny(msg_id: str, reason: str) -> dict[str, Any]:
    return {"type": "lease-deny", "id": msg_id, "reason": reason}
