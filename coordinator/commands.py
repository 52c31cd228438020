"""The coordinator's commands behind `nodewarden-coordinator` (coordinator/cli.py parses
them): the in-process session, serve, keys, watch and the operator's reads and writes.
Exit codes: coordinator/exits.py."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agent.report.wire import LineReader, encode_reply
from coordinator.exits import EXIT_OK, EXIT_REFUSED, EXIT_STORE, EXIT_USAGE
from coordinator.keys import has_line, key_line, public_key, write_key
from coordinator.notify import deliver, retry_in
from coordinator.replies import store_away, unknown_host
from coordinator.session import Session
from coordinator.settings import NAME, CoordinatorSettings
from coordinator.store import HostRecord, StoreError, Tx
from coordinator.stores import Store, open_store


def run(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    """The command `args` names, with the store open for it."""
    try:
        store = open_store(settings.store_url)
    except StoreError as exc:
        return _store_down(args, settings, exc)
    try:
        return _run(args, settings, store)
    except StoreError as exc:
        return _store_down(args, settings, exc)
    finally:
        store.close()


def _store_down(args: argparse.Namespace, settings: CoordinatorSettings,
                exc: StoreError) -> int:
    """The store cannot be opened or written. `watch`, the dead man's switch, tells the
    default group's contacts straight away (no alert can be kept, so none is
    escalated): a coordinator that cannot keep state is an outage of its own."""
    print(f"nodewarden-coordinator: store unavailable: {exc}", file=sys.stderr)
    if args.command != "watch":
        return EXIT_STORE
    alert = {"alert": 0, "kind": "store", "scope": "coordinator", "raised": time.time(),
             "text": f"the coordinator cannot write its store: {exc}"}
    for name in settings.default_group.contacts:
        why = deliver(settings.notifiers[name], {**alert, "contact": name})
        print(f"store alert to {name}: {'delivered' if why is None else why}",
              file=sys.stderr)
    if not settings.default_group.contacts:
        print("nodewarden-coordinator: no [default_group] contacts to tell", file=sys.stderr)
    return EXIT_STORE


def _run(args: argparse.Namespace, settings: CoordinatorSettings, store: Store) -> int:
    command = args.command
    if command == "session":
        return serve_session(args.host, settings, store)
    if command == "serve":
        return _serve(settings, store)
    if command == "keys":
        return (_keys_remove(args.host, settings, store) if args.keys_command == "remove"
                else _keys_add(args, settings, store))
    if command == "watch":
        return _watch(args.json, settings, store)
    if command == "events":
        return _events(args, store)
    if command == "ack":
        return _ack(args.alert, store)
    if command == "approve":
        return _approve(args.approval, store)
    if command == "maintenance":
        return _maintenance(args.state == "on", args.scope, store)
    return _show(command, args.json, store, settings)


def _ack(alert_id: int, store: Store) -> int:
    if not store.run(lambda tx: tx.ack(alert_id, time.time())):
        print(f"nodewarden-coordinator: no unacknowledged alert {alert_id}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"alert {alert_id} acknowledged")
    return EXIT_OK


def _maintenance(on: bool, scope: str, store: Store) -> int:
    if not NAME.fullmatch(scope):
        print(f"nodewarden-coordinator: {scope!r} is not a group or host name",
              file=sys.stderr)
        return EXIT_USAGE
    known = store.run(lambda tx: {n for h in tx.hosts() for n in (h.name, h.group)})
    store.run(lambda tx: tx.set_maintenance(scope, on, time.time()))
    print(f"maintenance {'on' if on else 'off'} for {scope}")
    if scope not in known:
        print(f"nodewarden-coordinator: note: no host or group named {scope} is known yet",
              file=sys.stderr)
    return EXIT_OK


def _approve(approval_id: int, store: Store) -> int:
    def work(tx: Tx) -> tuple[str, str, str] | None:
        approved = tx.approve(approval_id, time.time())
        if approved is not None:
            tx.end_alerts("approval", "/".join(approved), time.time())
        return approved

    approved = store.run(work)
    if approved is None:
        print(f"nodewarden-coordinator: no approval {approval_id} is waiting (see "
              "`approvals`)", file=sys.stderr)
        return EXIT_REFUSED
    host, action, subject = approved
    print(f"approved {approval_id}: {host} may run {action} on {_shown(subject)} when it "
          "asks next")
    return EXIT_OK


def serve_session(host: str, settings: CoordinatorSettings, store: Store) -> int:
    """Answer the agent's lines in this process until it closes its side (or a fatal
    reply): the session of `[serve] socket = ""`."""
    out = sys.stdout.buffer
    record = store.run(lambda tx: tx.host(host)) if NAME.fullmatch(host) else None
    if record is None:
        _send(out, unknown_host(host))
        return EXIT_REFUSED
    session = Session(record, store, settings, time.time)
    reader = LineReader(sys.stdin.fileno())
    while lines := reader.batch():
        try:
            replies = session.reply_to(lines)
        except StoreError as exc:
            _send(out, store_away(exc))
            return EXIT_STORE
        for reply in replies:
            _send(out, reply)
        if session.ended:
            return EXIT_REFUSED
    return EXIT_OK


def _serve(settings: CoordinatorSettings, store: Store) -> int:
    from agent.daemon.watchdog import WatchdogPinger, notifier_from_env, watchdog_interval
    from coordinator.handover import ServeError
    from coordinator.serve import Server

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    notifier = notifier_from_env(os.environ)
    server = Server(settings, store, time.time, notifier)
    try:
        server.listen()
    except (ServeError, OSError) as exc:
        print(f"nodewarden-coordinator: serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    pinger = WatchdogPinger(notifier, watchdog_interval(os.environ, os.getpid()),
                            time.monotonic())
    try:
        server.run(pinger)
    finally:
        server.close()
    return EXIT_OK


def _send(out: Any, reply: dict[str, Any]) -> None:
    out.write(encode_reply(reply))
    out.flush()  # a burst's replies go out as the session writes them: one write each


def _keys_add(args: argparse.Namespace, settings: CoordinatorSettings,
              store: Store) -> int:
    for what, value in (("host", args.host), ("group", args.group), ("role", args.role)):
        if not NAME.fullmatch(value):
            print(f"nodewarden-coordinator: {what} {value[:64]!r}: 1-63 letters, digits, "
                  "'.', '_' or '-'", file=sys.stderr)
            return EXIT_USAGE
    text = args.pubkey
    if not text.startswith("ssh-") and not text.startswith(("ecdsa-", "sk-")):
        try:
            text = Path(text).read_text("utf-8")
        except OSError as exc:
            print(f"nodewarden-coordinator: {args.pubkey}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_REFUSED
    try:
        key = public_key(text)
        line = key_line(settings.command, args.config, args.host, key)
    except ValueError as exc:
        print(f"nodewarden-coordinator: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    record = HostRecord(args.host, args.group, args.role, key, time.time(), None)
    authorized = Path(settings.authorized_keys)

    def add(tx: Tx) -> tuple[str | None, bool]:
        """(the host the key is already another's of, whether the record is as asked)."""
        owner = next((h.name for h in tx.hosts() if h.pubkey == key and h.name != args.host),
                     None)
        old = tx.host(args.host)
        same = old is not None and (old.pubkey, old.group, old.role) == (key, args.group,
                                                                         args.role)
        if owner is None and not same:
            tx.put_host(record)
        return owner, same

    owner, same = store.run(add)
    if owner is not None:
        print(f"nodewarden-coordinator: that key is already {owner}'s: each host needs a key "
              "of its own (sshd would serve both as the first)", file=sys.stderr)
        return EXIT_REFUSED
    if same and has_line(authorized, line):  # a rollout run again changes nothing
        print(f"unchanged: {args.host} (group {args.group}, role {args.role})")
        return EXIT_OK
    write_key(authorized, args.host, line)
    print(f"added {args.host} (group {args.group}, role {args.role}) to "
          f"{settings.authorized_keys}")
    return EXIT_OK


def _keys_remove(host: str, settings: CoordinatorSettings, store: Store) -> int:
    """The host leaves the fleet: its line out of authorized_keys first (it cannot
    connect again), then its record; its history stays."""
    if not NAME.fullmatch(host):
        print(f"nodewarden-coordinator: host {host[:64]!r}: 1-63 letters, digits, '.', '_' "
              "or '-'", file=sys.stderr)
        return EXIT_USAGE
    write_key(Path(settings.authorized_keys), host, None)
    if store.run(lambda tx: tx.remove_host(host, time.time())):
        print(f"removed {host}: its key is out of {settings.authorized_keys}, its leases "
              "given back; its messages stay")
    else:
        print(f"unchanged: {host} was not known")
    return EXIT_OK


def _watch(as_json: bool, settings: CoordinatorSettings, store: Store) -> int:
    """Silent hosts: an alert each (once), ended when the host is heard again. The round
    writes the store, so a store that cannot be written fails it (exit 3)."""
    now = time.time()

    def round_(tx: Tx) -> list[dict[str, Any]]:
        silent = []
        for h in tx.hosts():
            quiet = now - (h.last_seen if h.last_seen is not None else h.added)
            if quiet > settings.silent_after_s:
                seen = "never heard from" if h.last_seen is None else \
                    f"not heard from for {quiet:.0f} s"
                tx.raise_alert("silent", h.name, f"host {h.name} (group {h.group}) is "
                               f"silent: {seen}", now, group=h.group)
                silent.append({"host": h.name, "group": h.group, "last_seen": h.last_seen})
            else:
                tx.end_alerts("silent", h.name, now)
        return silent

    silent = store.run(round_)
    undelivered = deliver_alerts(settings, store, now)
    if as_json:
        print(json.dumps({"silent": silent, "undelivered": undelivered}, indent=2,
                         sort_keys=True))
    for h in [] if as_json else silent:
        print(f"silent: {h['host']} (group {h['group']})")
    for a in [] if as_json else undelivered:
        print(f"NOT DELIVERED: alert {a['alert']} ({a['kind']} {_shown(a['scope'])}): "
              f"{a['why']}")
    return EXIT_REFUSED if silent or undelivered else EXIT_OK


def deliver_alerts(settings: CoordinatorSettings, store: Store, now: float
                   ) -> list[dict[str, Any]]:
    """Alerts to their contacts (outside any transaction: a slow webhook holds no lock),
    escalated when not acknowledged in time; the ones that could not be delivered."""
    store.run(lambda tx: tx.escalate_unacked(now - settings.ack_within_s, now))
    failed = []
    for alert in store.run(lambda tx: tx.due(now)):
        contacts = settings.group(alert["group"]).contacts
        if not contacts:
            failed.append({**alert, "why": f"group {alert['group'] or '(default)'} has no "
                           "contacts"})
            continue
        name = contacts[min(alert["contact"], len(contacts) - 1)]
        why = deliver(settings.notifiers[name], {**alert, "contact": name})
        alert_id, next_try = int(alert["alert"]), now + retry_in(int(alert["attempts"]))

        def record(tx: Tx, why: str | None = why, alert_id: int = alert_id,
                   next_try: float = next_try, name: str = name) -> None:
            if why is None:
                tx.delivered(alert_id, now)
            else:
                tx.not_delivered(alert_id, next_try, f"{name}: {why}")

        store.run(record)
        if why is not None:
            failed.append({**alert, "why": f"{name}: {why}"})
    return failed


def _events(args: argparse.Namespace, store: Store) -> int:
    rows = [{"host": m[0], "id": m[1], "type": m[2], "received": m[3],
             "body": json.loads(m[4])}
            for m in store.run(lambda tx: tx.messages(args.host)) if m[3] > args.since]
    if args.json:
        print(json.dumps({"events": rows}, indent=2, sort_keys=True))
        return EXIT_OK
    for row in rows:
        print(f"{row['received']:.3f} {row['host']} {row['type']} {row['id']} "
              f"{_shown(json.dumps(row['body'], sort_keys=True))[:300]}")
    if not rows:
        print("no events")
    return EXIT_OK


def _show(command: str, as_json: bool, store: Store,
          settings: CoordinatorSettings) -> int:
    now = time.time()

    def read(tx: Tx) -> list[dict[str, Any]]:
        if command == "incidents":
            return [{"problem": p, "subject": s, "hosts": hosts} for p, s, hosts in
                    tx.incidents(settings.correlate, settings.correlate_min_hosts)]
        if command == "status":
            return _status(tx, now)
        if command == "approvals":
            return tx.approvals()
        if command == "alerts":
            return [{"alert": a[0], "kind": a[1], "scope": a[2], "text": a[3], "raised": a[4],
                     "acked": a[5], "ended": a[6]} for a in tx.alerts()]
        return [{"lease": x.id, "host": x.host, "group": x.group, "action": x.action,
                 "subject": x.subject, "granted": x.granted, "expires": x.expires,
                 "released": x.released, "active": x.active(now)} for x in tx.leases()]

    rows = store.run(read)
    if as_json:
        print(json.dumps({command: rows}, indent=2, sort_keys=True))
        return EXIT_OK
    for row in rows:
        print("  ".join(f"{k}={_shown(v)}" for k, v in row.items()))
    if not rows:
        print(f"no {'hosts' if command == 'status' else command}")
    return EXIT_OK


def _status(tx: Tx, now: float) -> list[dict[str, Any]]:
    """Each host: its group, role, when last heard, what it has firing, and the
    disruptive actions it is running (the leases it holds)."""
    firing: dict[str, list[str]] = {}
    for host, problem, subject, severity, _ in tx.firing():
        firing.setdefault(host, []).append(f"{problem} {subject} ({severity})")
    return [{"host": h.name, "group": h.group, "role": h.role, "last_seen": h.last_seen,
             "firing": firing.get(h.name, []),
             "running": [f"{x.action} {x.subject} (lease {x.id}, until {x.expires:.0f})"
                         for x in tx.held_by(h.name, now)]} for h in tx.hosts()]


def _shown(value: object) -> str:
    """A value for a terminal: text an agent wrote is quoted when not plainly printable."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + "; ".join(_shown(v) for v in value) + "]"
    text = str(value)
    return text if text.isprintable() and " " not in text else repr(text)

