"""`nodewarden approve ACTION --subject S [--for 1h]`: let one rung that needs approval run.

The approval is recorded in the state directory (approvals.json); the daemon re-reads it
every cycle. The approval guard allows a matching proposal while it is valid, and the
first execution consumes it: one approval, one run. `--subject '*'` approves the action on
any subject.
"""

from __future__ import annotations

import argparse
import json
import sys

from agent.cli import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE

HELP = (
    "Approve ACTION on --subject S for a while (default [guards.approval] ttl_s, 1h): a "
    "policy rung with needs_approval runs once it is approved; the first execution "
    "consumes the approval. Exit 0 recorded, 2 bad usage or configuration, 3 the state "
    "directory cannot be written."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", metavar="ACTION", help="the remediation to approve")
    parser.add_argument("--subject", metavar="S", required=True,
                        help="its subject as the policy names it ('*' = any)")
    parser.add_argument("--for", dest="duration", metavar="DURATION",
                        help="how long the approval is valid (default: guards.approval.ttl_s)")
    parser.add_argument("--reason", metavar="TEXT", default="", help="why (recorded)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--config", metavar="FILE", help="configuration file")


def main(args: argparse.Namespace) -> int:
    import remediations
    from agent.clock import SystemClock
    from agent.commands._operator import UsageError, duration, load, open_state, operator_name
    from agent.guards.base import iso
    from agent.state import StateError

    config = load("approve", args.config)
    if config is None:
        return EXIT_USAGE
    if args.action not in remediations.names():
        print(f"nodewarden approve: unknown action {args.action!r}; known: "
              + ", ".join(remediations.names()), file=sys.stderr)
        return EXIT_USAGE
    if not args.subject.strip():
        print("nodewarden approve: --subject must not be empty", file=sys.stderr)
        return EXIT_USAGE
    try:
        ttl = duration(args.duration) if args.duration else config.guards.approval_ttl_s
    except UsageError as exc:
        print(f"nodewarden approve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    now = SystemClock().now()
    state = open_state("approve", config.agent.state_dir, now)
    if state is None:
        return EXIT_RUNTIME
    try:
        approval = state.approve(args.action, args.subject, now, ttl, by=operator_name(),
                                 reason=args.reason)
    except StateError as exc:
        print(f"nodewarden approve: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.json:
        print(json.dumps({"action": approval.action, "subject": approval.subject,
                          "granted_at": approval.granted_at, "expires_at": approval.expires_at,
                          "by": approval.by, "reason": approval.reason}))
    else:
        print(f"approved {approval.action} on {approval.subject} until "
              f"{iso(approval.expires_at)} (by {approval.by}); the next execution uses it")
    return EXIT_OK
