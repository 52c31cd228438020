"""`nodewarden check`: validate the configuration, every signature and every action."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.config import Config, read_config
from agent.schema import ConfigError

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


def collect_errors(config_file: str | None, signatures_dir: str | None) -> list[ConfigError]:
    """Every error `run` would refuse to start with; used by `check`, `run` and SIGHUP."""
    config, errors = read_config(config_file)
    return errors + catalog_and_action_errors(config, signatures_dir)


def catalog_and_action_errors(config: Config, signatures_dir: str | None) -> list[ConfigError]:
    """What an already-read configuration still needs checked: the signatures (built-in
    and the user's, examples included) and every remediation module."""
    from agent.detect.catalog import check_examples, load_catalog
    from remediations import load, names

    user_dir = Path(signatures_dir) if signatures_dir else config.agent.signatures_dir
    catalog, errors = load_catalog(user_dir)
    errors.extend(check_examples(catalog))
    for action in names():
        try:
            load(action)
        except Exception as exc:  # a broken plugin is reported, locally
            errors.append(ConfigError(f"remediations/{action.replace('-', '_')}.py", action,
                                      f"cannot load: {type(exc).__name__}: {exc}"))
    return errors


def main(args: argparse.Namespace) -> int:
    errors = collect_errors(args.config, args.signatures_dir)
    for err in errors:
        if args.json:
            print(json.dumps({"file": err.file, "key": err.key, "reason": err.reason}))
        else:
            print(err)
    if not args.json:
        print("configuration ok" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0
