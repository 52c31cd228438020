"""`nodewarden run`: the agent daemon (docs/running.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from agent.config import load_config

HELP = (
    "Run the agent in the foreground: follow the kernel log, log files, metrics, devices "
    "and probes, decide, and act through the guard chain (the shipped mode is dry-run: "
    "nothing is executed). Built for systemd Type=notify with a watchdog; SIGHUP reloads "
    "the configuration (a bad one is refused and the old one kept), SIGTERM stops. "
    "Exit 0 after a clean stop (SIGTERM, SIGINT); 2, refusing to start, when the "
    "configuration or a signature has any error."
)

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE",
        help="configuration file (default: $NODEWARDEN_CONFIG or /etc/nodewarden/agent.toml; "
        "built-in defaults, dry-run, when absent)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="log to stderr at this level and above (default: info)")


def main(args: argparse.Namespace) -> int:
    from agent.cli import EXIT_USAGE

    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(),
        format="%(levelname)s %(name)s: %(message)s",  # journald adds the time
    )
    loaded, errors = load_config(args.config)
    if loaded is None:
        for err in errors:
            print(f"nodewarden run: {err}", file=sys.stderr)
        print(f"nodewarden run: refusing to start: {len(errors)} error(s) "
              "(nodewarden check lists them)", file=sys.stderr)
        return EXIT_USAGE

    from agent.clock import SystemClock
    from agent.daemon.loop import Daemon
    from agent.daemon.watchdog import notifier_from_env, watchdog_interval

    daemon = Daemon(
        loaded,
        reload_config=lambda: load_config(args.config),
        clock=SystemClock(),
        notifier=notifier_from_env(os.environ),
        watchdog_interval_s=watchdog_interval(os.environ, os.getpid()),
    )
    return daemon.run()
