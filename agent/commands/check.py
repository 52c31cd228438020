"""`nodewarden check`: validate the configuration, every signature and every action."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = (
    "Validate the configuration file, every signature (built-in and "
    "/etc/nodewarden/signatures.d/*.toml, including their examples) and every remediation "
    "module. Prints file, key or signature id, and reason for each error. "
    "Exit 0 when clean, 1 when anything is wrong."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE",
        help="configuration file (default: $NODEWARDEN_CONFIG or /etc/nodewarden/agent.toml; "
        "built-in defaults when absent)",
    )
    parser.add_argument(
        "--signatures-dir", metavar="DIR",
        help="user signature directory (default: agent.signatures_dir of the configuration)",
    )
    parser.add_argument("--json", action="store_true", help="print errors as JSON lines")


def main(args: argparse.Namespace) -> int:
    from agent.config import load_config

    signatures = Path(args.signatures_dir) if args.signatures_dir else None
    _loaded, errors = load_config(args.config, signatures_dir=signatures)
    for err in errors:
        if args.json:
            print(json.dumps({"file": err.file, "key": err.key, "reason": err.reason}))
        else:
            print(err)
    if not args.json:
        print("configuration ok" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0
