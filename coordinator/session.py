"""One agent's session: the lines it sends, the replies it gets (docs/protocol.md).

The session's host is what sshd's forced command says (`session --host NAME`): the key
is the identity. A message that claims another host is refused; group and role are the
store's (set by `keys add`), never what a message says. Each message is answered once,
in order; the same id again gets the same reply with no second effect (coordinator/
store.py). Bad input gets an `error` naming the problem and the session goes on, except
a wrong protocol version, which ends it after the reply.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from agent.report.text import printable
from agent.report.wire import (
    AGENT_TYPES,
    MAX_LINE_BYTES,
    PROTO,
    LineTooLong,
    Message,
    WireError,
    decode,
)
from coordinator.replies import ack, error
from coordinator.settings import SEVERITIES, CoordinatorSettings
from coordinator.store import HostRecord, StoreError, Tx
from coordinator.stores import Store

#: an action's name, as the agent's remediations are named (remediations/)
ACTION = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
MAX_SUBJECT = 256
#: a lease id is the store's row id
MAX_LEASE_ID = 2**63 - 1


class Session:
    """The coordinator's side of one agent's connection."""

    def __init__(self, host: HostRecord, store: Store, settings: CoordinatorSettings,
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
        return self.answer_all([line])[0]

    def answer_all(self, lines: Sequence[bytes | LineTooLong]) -> list[dict[str, Any]]:
        """The replies to lines that came together, decided in ONE transaction (one
        commit, one fsync, for a burst): all kept or, when the store fails, none. A fatal
        reply ends the list: the lines after it are not answered."""
        mark = self.checkpoint()
        try:
            return self._store.run(lambda tx: self.answer_in(tx, lines))
        except BaseException:
            self.rollback(mark)
            raise

    def answer_in(self, tx: Tx, lines: Sequence[bytes | LineTooLong]) -> list[dict[str, Any]]:
        """The replies to `lines` in the caller's transaction (serve decides the lines of
        every agent ready in one turn together: one commit for all of them)."""
        replies = []
        for line in lines:
            replies.append(self._answer(tx, line))
            if self.ended:
                break
        return replies

    def checkpoint(self) -> tuple[bool, bool]:
        """The session's own state, to put back when a transaction is rolled back (a
        hello not kept was not said)."""
        return self.greeted, self.ended

    def rollback(self, mark: tuple[bool, bool]) -> None:
        self.greeted, self.ended = mark

    def reply_to(self, lines: Sequence[bytes | LineTooLong]) -> list[dict[str, Any]]:
        """`answer_all`, except that a bug the coordinator hits on one line costs that
        line only: the batch is taken again a line per transaction, the line it fails on
        answered with an error (nothing of it kept). StoreError goes to the caller."""
        try:
            return self.answer_all(lines)
        except StoreError:
            raise
        except Exception:  # a bug must not hand the agent a traceback: find the line
            replies: list[dict[str, Any]] = []
            for line in lines:
                try:
                    replies += self.answer_all([line])
                except StoreError:
                    raise
                except Exception as exc:
                    replies.append(error(None, f"the coordinator failed on this line "
                                         f"({type(exc).__name__}); nothing of it was "
                                         "recorded"))
                if self.ended:
                    break
            return replies

    def _answer(self, tx: Tx, line: bytes | LineTooLong) -> dict[str, Any]:
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
            return self._hello(tx, msg)
        if msg.type == "hello":
            return error(msg.id, "hello was already said in this session")
        return self._once(tx, msg)

    def _hello(self, tx: Tx, msg: Message) -> dict[str, Any]:
        if msg.type != "hello":
            return error(msg.id, "the first message of a session must be hello")
        proto = msg.get("proto")
        if proto != PROTO or isinstance(proto, bool):
            self.ended = True
            return error(msg.id, f"protocol version {repr(proto)[:40]} is not spoken here: "
                         f"this coordinator speaks {PROTO}")
        self.greeted = True
        tx.prune(self._clock())
        return self._once(tx, msg)

    def _once(self, tx: Tx, msg: Message) -> dict[str, Any]:
        """The message's reply and effect, or the reply it already got. A refused message
        is not kept: sent again corrected, under the same id, it is decided afresh."""
        host, now = self.host.name, self._clock()
        digest = _digest(msg)
        earlier = tx.earlier(host, msg.id)
        if earlier is not None:
            if earlier[0] != digest:
                return error(msg.id, f"id {msg.id} was already used for another message")
            return earlier[1]
        if tx.host(host) is None:  # `keys remove` while its session was held: it ends
            self.ended = True
            return error(msg.id, f"host {host} is no longer known here (its key was "
                         "removed): nothing was recorded")
        tx.seen(host, now)
        reply = self._decide(tx, msg, now)
        if reply["type"] != "error":
            tx.record(host, msg.id, msg.type, dict(msg.fields), digest=digest, reply=reply,
                      now=now)
        return reply

    def _decide(self, tx: Tx, msg: Message, now: float) -> dict[str, Any]:
        if msg.type in ("finding", "resolved"):
            return self._firing(tx, msg, now)
        if msg.type == "plan" and msg.get("action") == "page" and msg.get("execute") is True:
            self._page(tx, msg, now)
        if msg.type == "lease-request":
            return self._lease_request(tx, msg, now)
        if msg.type == "lease-renew":
            return self._lease_renew(tx, msg, now)
        if msg.type == "lease-release":
            return self._lease_release(tx, msg, now)
        return ack(msg.id)

    def _firing(self, tx: Tx, msg: Message, now: float) -> dict[str, Any]:
        """What the host has firing: a trusted finding with a problem, a subject and a
        known severity fires; its resolution ends it. Any other finding is kept as a
        message only (a forged kernel line, untrusted, must not make a storm)."""
        problem, subject, severity = msg.get("problem"), msg.get("subject"), msg.get("severity")
        if not (isinstance(problem, str) and _label(problem) and isinstance(subject, str)
                and _label(subject)):
            return ack(msg.id)
        if msg.type == "resolved":
            tx.resolve(self.host.name, problem, subject)
            tx.end_alerts("page", f"{self.host.name}/{problem}/{subject}", now)
        elif msg.get("trusted", True) is True and severity in SEVERITIES:
            tx.fire(self.host.name, problem, subject, str(severity), now)
        if problem in self._settings.correlate:
            self._correlate(tx, problem, subject, now)
        return ack(msg.id)

    def _page(self, tx: Tx, msg: Message, now: float) -> None:
        """An agent's page reaches the coordinator's notifiers too (once per problem and
        subject until it resolves): a person hears even when the host's own way out is
        down. A page about a dependency in an incident is that incident's: its one alert
        tells the person (ten clients paging about the filer is one alert, not ten)."""
        problem, subject = msg.get("problem"), msg.get("finding_subject") or msg.get("subject")
        text = msg.get("summary") or msg.get("reason") or "page"
        if not (isinstance(problem, str) and _label(problem) and isinstance(subject, str)
                and _label(subject) and isinstance(text, str)):
            return
        if (problem in self._settings.correlate and len(tx.sharing(problem, subject))
                >= self._settings.correlate_min_hosts):
            return
        host = tx.host(self.host.name) or self.host
        tx.raise_alert("page", f"{host.name}/{problem}/{subject}",
                       f"page from {host.name}: {printable(text[:500])}", now,
                       group=host.group)

    def _correlate(self, tx: Tx, problem: str, subject: str, now: float) -> None:
        """One incident, one alert, for a dependency that several hosts find failing."""
        hosts = tx.sharing(problem, subject)
        scope = f"{problem}:{subject}"
        if len(hosts) < self._settings.correlate_min_hosts:
            tx.end_alerts("incident", scope, now)
            return
        # routed by the reporting host's own group (its key's), never by the subject an
        # agent wrote: a finding's text labels an incident, it does not pick who is told
        reporter = tx.host(self.host.name) or self.host
        began = tx.raise_alert("incident", scope, f"incident: {problem} {subject} on "
                               f"{len(hosts)} hosts ({', '.join(hosts[:10])}): the shared "
                               "dependency is the likely cause; its clients' disruptive "
                               "actions hold", now, group=reporter.group)
        if began is not None:  # the pages its hosts sent before it began are now its own
            for host in hosts:
                tx.end_alerts("page", f"{host}/{problem}/{subject}", now)

    def _dependency(self, tx: Tx, host: str) -> str | None:
        """Why this host holds: a finding of its names a dependency in an incident (the
        dependency's own agent acts; its clients restarting fixes nothing)."""
        settings = self._settings
        for problem, subject in tx.firing_of(host):
            if problem not in settings.correlate or subject == host:
                continue
            sharing = tx.sharing(problem, subject)
            if len(sharing) >= settings.correlate_min_hosts:
                return (f"dependency incident: {problem} {subject} on {len(sharing)} hosts; "
                        f"{subject} is the likely cause, so its clients hold")
        return None

    def _storm(self, tx: Tx, group: str, now: float) -> str | None:
        """Why the group is in a storm (more than storm_percent of its hosts with a
        finding of storm_severity or worse firing), or None; a storm pages once, and its
        alert ends when the group is below the line again."""
        settings = self._settings.group(group)
        size = tx.group_size(group)
        worse = SEVERITIES[SEVERITIES.index(settings.storm_severity):]
        hit = tx.hosts_firing(group, worse)
        if not size or len(hit) * 100 <= settings.storm_percent * size:
            tx.end_alerts("storm", group, now)
            return None
        text = (f"storm in group {group}: {len(hit)} of {size} hosts have {'/'.join(worse)} "
                f"findings firing (over {settings.storm_percent:g}%): automatic disruptive "
                f"actions are refused until it passes ({', '.join(hit[:10])})")
        tx.raise_alert("storm", group, text, now, group=group)
        return text

    def _ttl(self, msg: Message) -> float | str:
        ttl = msg.get("ttl_s")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            return "ttl_s must be a number of seconds"
        if not 1 <= ttl <= self._settings.max_ttl_s:  # ints of any size compare exactly
            return f"ttl_s must be between 1 and {self._settings.max_ttl_s:g}"
        return float(ttl)

    def _lease_request(self, tx: Tx, msg: Message, now: float) -> dict[str, Any]:
        action, subject, ttl = msg.get("action"), msg.get("subject"), self._ttl(msg)
        if not isinstance(action, str) or not ACTION.fullmatch(action):
            return error(msg.id, "action must be a remediation's name (1-64 of a-z, 0-9, '-')")
        if (not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT
                or not subject.isprintable()):
            return error(msg.id, f"subject must be printable text of 1-{MAX_SUBJECT} "
                         "characters")
        if isinstance(ttl, str):
            return error(msg.id, ttl)
        host = tx.host(self.host.name) or self.host
        group = host.group
        held = (self._held_elsewhere(tx, host, group) or self._storm(tx, group, now)
                or self._dependency(tx, host.name))
        if held is not None:
            return _deny(msg.id, held)
        mine = tx.held_by(host.name, now)
        if mine:
            return _deny(msg.id, f"{host.name} already holds lease {mine[0].id} "
                         f"({mine[0].action}): one disruptive action per host at a time")
        approval = self._approval(tx, host, action, subject, now)
        if isinstance(approval, str):
            return _deny(msg.id, approval)
        limit = self._settings.group(group).max_disruptive
        running = tx.active_leases(group, now)
        if len(running) >= limit:
            holders = ", ".join(sorted({lease.host for lease in running}))
            return _deny(msg.id, f"group {group} is at its limit of {limit} disruptive "
                         f"action(s) at once (held by {holders})" if running else
                         f"group {group} allows no disruptive action")
        if approval is not None:
            tx.use_approval(approval, now)
        lease = tx.grant(host.name, group, action, subject, now=now, ttl_s=ttl)
        return {"type": "lease-grant", "id": msg.id, "lease": lease.id,
                "expires": lease.expires}

    def _approval(self, tx: Tx, host: HostRecord, action: str, subject: str,
                  now: float) -> int | str | None:
        """When the group wants a person to approve this action: the approval to use
        (its id), or why the lease waits (the request is kept and the group's contacts
        are told, once); None when no approval is asked for."""
        if action not in self._settings.group(host.group).approve:
            return None
        found = tx.approval(host.name, action, subject)
        if found is not None and found[1] is not None:
            if now - found[1] <= self._settings.approval_valid_s:
                return found[0]
            tx.use_approval(found[0], now)  # approved too long ago: ask afresh
            found = None
        if found is None:
            waiting = tx.waiting_approval(host.name)
            if waiting is not None:  # one request per host waits at a time: no flood
                return (f"awaiting a person's approval of {host.name}'s earlier request "
                        f"first (approval {waiting})")
            found = (tx.ask_approval(host.name, host.group, action, subject, now), None)
            tx.raise_alert("approval", f"{host.name}/{action}/{subject}",
                           f"{host.name} asks to run {action} on {printable(subject)!r}: "
                           f"approve with `nodewarden-coordinator approve {found[0]}`",
                           now, group=host.group)
        return (f"awaiting a person's approval of {action} on {host.name} (approval "
                f"{found[0]}: `nodewarden-coordinator approve {found[0]}`)")

    def _held_elsewhere(self, tx: Tx, host: HostRecord, group: str) -> str | None:
        """Why a lease cannot be held now whatever the count: maintenance of its scope."""
        scopes = set(tx.maintenance()) & {host.name, group}
        return f"maintenance ({', '.join(sorted(scopes))})" if scopes else None

    def _own_lease(self, tx: Tx, msg: Message) -> int | dict[str, Any]:
        lease_id = msg.get("lease")
        if (isinstance(lease_id, bool) or not isinstance(lease_id, int)
                or not 0 < lease_id <= MAX_LEASE_ID):
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
        host = tx.host(self.host.name) or self.host
        held = self._held_elsewhere(tx, host, host.group)
        if held is None and host.group != lease.group:
            held = f"{host.name} is now in group {host.group}, not {lease.group}"
        if held is None and now + ttl - lease.granted > self._settings.max_lifetime_s:
            held = (f"lease {found} has reached the longest life a lease may have "
                    f"({self._settings.max_lifetime_s:g} s): release it and ask again")
        if held is not None:
            tx.release(found, now)
            return _deny(msg.id, held)
        tx.renew(found, now + ttl)
        return {"type": "lease-grant", "id": msg.id, "lease": found, "expires": now + ttl}

    def _lease_release(self, tx: Tx, msg: Message, now: float) -> dict[str, Any]:
        found = self._own_lease(tx, msg)
        if isinstance(found, dict):
            return found
        tx.release(found, now)
        return ack(msg.id)


def _label(text: str) -> bool:
    return 0 < len(text) <= MAX_SUBJECT and text.isprintable()


def _digest(msg: Message) -> str:
    """What a message says, as a digest: the same id must always carry the same."""
    text = json.dumps([msg.type, dict(msg.fields)], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _deny(msg_id: str, reason: str) -> dict[str, Any]:
    return {"type": "lease-deny", "id": msg_id, "reason": reason}
