"""`nodewarden-coordinator`: the central side of the fleet (docs/coordinator.md).

Exit codes (scripts may trust them): 0 done; 1 a refusal the command reports (an
unknown host, a bad key); 2 bad usage or configuration; 3 the store cannot be opened
or written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.report.wire import LineReader, LineTooLong, encode_reply
from coordinator.keys import key_line, public_key, write_key
from coordinator.notify import deliver, retry_in
from coordinator.session import Session, error
from coordinator.settings import NAME, CoordinatorSettings, load_settings
from coordinator.store import HostRecord, SqliteStore, StoreError, Tx, open_store

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodewarden-coordinator",
        description="The fleet's coordinator: agents report to it over SSH (each key's "
        "forced command runs `session --host NAME`), it grants leases for disruptive "
        "actions and keeps the fleet's state in its store.",
        epilog="exit codes: 0 done, 1 refused (an unknown host, a bad key, no such alert) "
        "or, for watch, a host is silent, 2 bad usage or configuration, 3 store "
        "unavailable")
    parser.add_argument("--config", type=Path, default=None,
                        help="configuration file (default /etc/nodewarden/coordinator.toml "
                        "if it exists, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)
    session = sub.add_parser("session", help="serve one agent's SSH session on stdin/"
                             "stdout (run by sshd's forced command)")
    session.add_argument("--host", required=True, help="the host the key belongs to")
    keys = sub.add_parser("keys", help="agents' keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_sub.add_parser("add", help="record HOST with its group and role and write "
                              "its forced-command line into authorized_keys")
    add.add_argument("host")
    add.add_argument("pubkey", help="the host's public key ('TYPE BASE64 [COMMENT]', or a "
                     "path to a .pub file)")
    add.add_argument("--group", required=True)
    add.add_argument("--role", default="generic")
    for name, what in (("status", "hosts: group, role, last seen"),
                       ("leases", "leases: active and past"),
                       ("alerts", "alerts for a person (storms, silent hosts, incidents), "
                        "newest first"),
                       ("incidents", "dependencies failing on several hosts at once")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("--json", action="store_true", help="one JSON document")
    watch = sub.add_parser("watch", help="one round of the dead man's switch (run by a "
                           "timer): hosts not heard from for [watch] silent_after_s get an "
                           "alert, hosts heard again end theirs; exit 1 when any is silent")
    watch.add_argument("--json", action="store_true", help="one JSON document")
    events = sub.add_parser("events", help="the messages agents sent, oldest first")
    events.add_argument("--host", help="only this host's")
    events.add_argument("--since", type=float, default=0.0,
                        help="only those received after this Unix time")
    events.add_argument("--json", action="store_true", help="one JSON document")
    ack = sub.add_parser("ack", help="acknowledge an alert: a person has it")
    ack.add_argument("alert", type=int)
    maint = sub.add_parser("maintenance", help="refuse leases for a group or a host")
    maint.add_argument("state", choices=("on", "off"))
    maint.add_argument("scope", help="a group or a host name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings, errors = load_settings(args.config)
    if settings is None:
        for e in errors:
            print(f"nodewarden-coordinator: {e}", file=sys.stderr)
        return EXIT_USAGE
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


def _run(args: argparse.Namespace, settings: CoordinatorSettings, store: SqliteStore) -> int:
    if args.command == "session":
        return serve_session(args.host, settings, store)
    if args.command == "keys":
        return _keys_add(args, settings, store)
    if args.command == "watch":
        return _watch(args.json, settings, store)
    if args.command == "events":
        return _events(args, store)
    if args.command == "ack":
        if not store.run(lambda tx: tx.ack(args.alert, time.time())):
            print(f"nodewarden-coordinator: no unacknowledged alert {args.alert}",
                  file=sys.stderr)
            return EXIT_REFUSED
        print(f"alert {args.alert} acknowledged")
        return EXIT_OK
    if args.command == "maintenance":
        if not NAME.fullmatch(args.scope):
            print(f"nodewarden-coordinator: {args.scope!r} is not a group or host name",
                  file=sys.stderr)
            return EXIT_USAGE
        known = store.run(lambda tx: {n for h in tx.hosts() for n in (h.name, h.group)})
        store.run(lambda tx: tx.set_maintenance(args.scope, args.state == "on", time.time()))
        print(f"maintenance {args.state} for {args.scope}")
        if args.scope not in known:
            print(f"nodewarden-coordinator: note: no host or group named {args.scope} is "
                  "known yet", file=sys.stderr)
        return EXIT_OK
    return _show(args.command, args.json, store, settings)


def serve_session(host: str, settings: CoordinatorSettings, store: SqliteStore) -> int:
    """Answer the agent's lines until it closes its side (or a fatal reply)."""
    out = sys.stdout.buffer
    record = store.run(lambda tx: tx.host(host)) if NAME.fullmatch(host) else None
    if record is None:
        _send(out, error(None, f"host {host[:64]!r} is not known here: add its key with "
                         "`nodewarden-coordinator keys add`"))
        return EXIT_REFUSED
    session = Session(record, store, settings, time.time)
    reader = LineReader(sys.stdin.fileno())
    while lines := reader.batch():
        try:
            replies = session.answer_all(lines)
        except StoreError as exc:
            _send(out, error(None, f"coordinator store unavailable ({exc}): nothing was "
                             "recorded; send again later"))
            return EXIT_STORE
        except Exception:  # a bug must not hand the agent a traceback: find the line
            replies = _one_by_one(session, lines)
        for reply in replies:
            _send(out, reply)
        if session.ended:
            return EXIT_REFUSED
    return EXIT_OK


def _one_by_one(session: Session, lines: list[bytes | LineTooLong]) -> list[dict[str, Any]]:
    """A batch that failed, each line in its own transaction: the line the coordinator
    fails on gets an error (nothing of it kept), the others their answers."""
    replies: list[dict[str, Any]] = []
    for line in lines:
        try:
            replies += session.answer_all([line])
        except StoreError:
            raise
        except Exception as exc:
            replies.append(error(None, f"the coordinator failed on this line "
                                 f"({type(exc).__name__}); nothing of it was recorded"))
        if session.ended:
            break
    return replies


def _send(out: Any, reply: dict[str, Any]) -> None:
    out.write(encode_reply(reply))
    out.flush()  # a burst's replies go out as the session writes them: one write each


def _keys_add(args: argparse.Namespace, settings: CoordinatorSettings,
              store: SqliteStore) -> int:
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

    def add(tx: Tx) -> str | None:
        owner = next((h.name for h in tx.hosts() if h.pubkey == key and h.name != args.host),
                     None)
        if owner is None:
            tx.put_host(record)
        return owner

    owner = store.run(add)
    if owner is not None:
        print(f"nodewarden-coordinator: that key is already {owner}'s: each host needs a key "
              "of its own (sshd would serve both as the first)", file=sys.stderr)
        return EXIT_REFUSED
    write_key(Path(settings.authorized_keys), args.host, line)
    print(f"added {args.host} (group {args.group}, role {args.role}) to "
          f"{settings.authorized_keys}")
    return EXIT_OK


def _watch(as_json: bool, settings: CoordinatorSettings, store: SqliteStore) -> int:
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


def deliver_alerts(settings: CoordinatorSettings, store: SqliteStore, now: float
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


def _events(args: argparse.Namespace, store: SqliteStore) -> int:
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


def _show(command: str, as_json: bool, store: SqliteStore,
          settings: CoordinatorSettings) -> int:
    now = time.time()

    def read(tx: Tx) -> list[dict[str, Any]]:
        if command == "incidents":
            return [{"problem": p, "subject": s, "hosts": hosts} for p, s, hosts in
                    tx.incidents(settings.correlate, settings.correlate_min_hosts)]
        if command == "status":
            return [{"host": h.name, "group": h.group, "role": h.role,
                     "last_seen": h.last_seen} for h in tx.hosts()]
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


def _shown(value: object) -> str:
    """A value for a terminal: text an agent wrote is quoted when not plainly printable."""
    if value is None:
        return "-"
    text = str(value)
    return text if text.isprintable() and " " not in text else repr(text)


if __name__ == "__main__":
    sys.exit(main())
