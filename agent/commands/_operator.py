"""Shared by the operator commands (status, remediate, maintenance, approve, sample):
loading the configuration and the safety state the same way, durations as people type
them."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from agent.config import Config, load_config
from agent.durations import EXAMPLES, parse_duration
from agent.state import SafetyState


class UsageError(Exception):
    """Bad input on the command line (exit 2)."""


def duration(text: str, what: str = "--for") -> float:
    """'90s', '15m', '2h', '1d' or plain seconds; UsageError otherwise."""
    seconds = parse_duration(text)
    if seconds is None:
        raise UsageError(f"{what} {text!r} is not a duration like {EXAMPLES}")
    if seconds <= 0:
        raise UsageError(f"{what} must be longer than 0")
    return seconds


def operator_name() -> str:
    """Who is at the shell (sudo keeps the real name in SUDO_USER)."""
    for var in ("SUDO_USER", "LOGNAME", "USER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def load(command: str, config_file: str | None) -> Config | None:
    """The configuration as `run` would load it (agent/config.py load_config: the catalog
    and the remediation modules validated too), or None after printing every error."""
    loaded, errors = load_config(config_file)
    if loaded is None:
        for err in errors:
            print(f"nodewarden {command}: {err}", file=sys.stderr)
        print(f"nodewarden {command}: refusing a configuration with {len(errors)} "
              "error(s) (nodewarden check lists them)", file=sys.stderr)
        return None
    return loaded.config


def open_state(command: str, state_dir: Path, now: float) -> SafetyState | None:
    """The safety state the daemon uses, or None after printing why it cannot be opened."""
    try:
        state = SafetyState(state_dir, now=now)
    except OSError as exc:
        print(f"nodewarden {command}: cannot open the state directory {state_dir}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return None
    for problem in state.problems:
        print(f"nodewarden {command}: warning: {problem}", file=sys.stderr)
    return state
