"""`nodewarden maintenance on|off|status|clear-history`: pause automatic actions.

The flag lives in the state directory (maintenance.json); the daemon re-reads it every
cycle, so it takes effect within a second without a reload. While it is on, the
maintenance guard denies every automatic action except pages; operator requests
(`nodewarden remediate`) still pass. It switches itself off at `--for`'s end.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from agent.cli import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE

if TYPE_CHECKING:  # imported when a command runs: `--help` stays light
    from agent.state import SafetyState

HELP = (
    "Pause automatic remediation for a while (on --for 2h --reason TEXT), resume it (off), "
    "show it (status), or clear a broken-history fault after inspecting it (clear-history). "
    "Pages still go out during maintenance. Exit 0 ok, 2 bad usage or configuration, "
    "3 the state directory cannot be written."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("on", "off", "status", "clear-history"),
                        help="on, off, status or clear-history")
    parser.add_argument("--for", dest="duration", metavar="DURATION",
                        help="with on: how long (90m, 2h, 1d); required")
    parser.add_argument("--reason", metavar="TEXT", help="with on: why (required)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--config", metavar="FILE", help="configuration file")


def describe(flag: Any, now: float) -> dict[str, Any]:
    from agent.guards.base import iso, span

    if flag is None:
        return {"on": False, "text": "maintenance off: automatic actions run as the mode says"}
    return {"on": True, "since": flag.since, "until": flag.until, "reason": flag.reason,
            "by": flag.by,
            "text": f"maintenance on until {iso(flag.until)} ({span(flag.until - now)} left), "
                    f"set by {flag.by or '?'} at {iso(flag.since)}: {flag.reason}"}


def _seconds(args: argparse.Namespace) -> float:
    """How long `on` lasts (UsageError for what does not go together)."""
    from agent.commands._operator import UsageError, duration

    if args.what != "on":
        if args.duration or args.reason:
            raise UsageError("--for and --reason go with 'on'")
        return 0.0
    if not args.duration or not (args.reason or "").strip():
        raise UsageError("on needs --for DURATION and --reason TEXT")
    return duration(args.duration)


def _print(args: argparse.Namespace, state: SafetyState, now: float) -> None:
    out = describe(state.maintenance(now), now)
    fault = state.history_fault
    out["history_fault"] = None if fault is None else fault.reason
    out["maintenance_fault"] = state.maintenance_fault
    if args.json:
        print(json.dumps(out))
        return
    print(out["text"])
    if args.what == "clear-history":
        print("history fault cleared: actions are counted from the history's valid "
              "entries again")
    elif fault is not None:
        print(f"history fault: {fault.reason} (nodewarden maintenance clear-history)")
    if state.maintenance_fault is not None:
        print(f"maintenance fault: {state.maintenance_fault}: it counts as on until it "
              "is set (nodewarden maintenance on|off)")


def main(args: argparse.Namespace) -> int:
    from agent.clock import SystemClock
    from agent.commands._operator import UsageError, load, open_state, operator_name
    from agent.state import StateError

    config = load("maintenance", args.config)
    if config is None:
        return EXIT_USAGE
    try:
        seconds = _seconds(args)
    except UsageError as exc:
        print(f"nodewarden maintenance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    now = SystemClock().now()
    state = open_state("maintenance", config.agent.state_dir, now)
    if state is None:
        return EXIT_RUNTIME
    try:
        if args.what == "on":
            state.set_maintenance(now, seconds, args.reason.strip(), by=operator_name())
        elif args.what == "off":
            state.clear_maintenance()
        elif args.what == "clear-history":
            state.clear_history_fault()
    except StateError as exc:
        print(f"nodewarden maintenance: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    _print(args, state, now)
    return EXIT_OK
