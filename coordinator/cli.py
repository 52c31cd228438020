"""`nodewarden-coordinator`: the central side of the fleet (docs/coordinator.md).

Exit codes (scripts may trust them): 0 done; 1 a refusal the command reports (an
unknown host, a bad key); 2 bad usage or configuration; 3 the store cannot be opened
or written.

This module is what every SSH session starts, so it imports little: a session that
hands its agent to `serve` (coordinator/handoff.py) never loads the store, the
notifiers or the session logic; every other command is in coordinator/commands.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from coordinator.exits import EXIT_OK, EXIT_REFUSED, EXIT_STORE, EXIT_USAGE
from coordinator.settings import load_settings

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_STORE", "EXIT_USAGE", "build_parser", "main"]


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
    sub.add_parser("serve", help="run the long-running process behind thin sessions in the "
                   "foreground: each session hands its agent's connection to it over "
                   "[serve] socket (systemd: Type=notify, watchdog)")
    keys = sub.add_parser("keys", help="agents' keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_sub.add_parser("add", help="record HOST with its group and role and write "
                              "its forced-command line into authorized_keys")
    add.add_argument("host")
    add.add_argument("pubkey", help="the host's public key ('TYPE BASE64 [COMMENT]', or a "
                     "path to a .pub file)")
    add.add_argument("--group", required=True)
    add.add_argument("--role", default="generic")
    remove = keys_sub.add_parser("remove", help="HOST leaves the fleet: its line out of "
                                 "authorized_keys, its record out of the store, its leases "
                                 "given back (its messages stay)")
    remove.add_argument("host")
    for name, what in (("status", "hosts: group, role, last seen"),
                       ("leases", "leases: active and past"),
                       ("alerts", "alerts for a person (storms, silent hosts, incidents), "
                        "newest first"),
                       ("incidents", "dependencies failing on several hosts at once"),
                       ("approvals", "actions waiting for (or given) a person's approval, "
                        "newest first")):
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
    approve = sub.add_parser("approve", help="a person's yes to an action its group "
                             "wants approved ([groups.NAME] approve): the agent's next "
                             "request gets its lease, within [leases] approval_valid_s")
    approve.add_argument("approval", type=int, help="the id `approvals` and the alert show")
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
    if args.command == "session" and settings.serve_socket:
        from coordinator.handoff import hand_off

        return hand_off(settings.serve_socket, args.host)
    from coordinator.commands import run

    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
