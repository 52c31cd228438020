"""The shipped default rules and ladders, as TOML data in agent/policy/defaults/.

`generic.toml` applies to every host; `storage.toml` and `mail.toml` add to it (and may
replace a generic rule or ladder of the same name) for `agent.role = "storage" | "mail"`.
The files use the same `[rules.NAME]` / `[policy.PROBLEM]` tables as the configuration
file and go through the same parser, so a mistake in them is reported like a user's.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

DEFAULTS_DIR = Path(__file__).parent / "defaults"


def shipped_files(role: str) -> list[Path]:
    """The default files that apply to `role`, generic first."""
    files = [DEFAULTS_DIR / "generic.toml"]
    if role != "generic" and (DEFAULTS_DIR / f"{role}.toml").exists():
        files.append(DEFAULTS_DIR / f"{role}.toml")
    return files


def shipped_tables(role: str) -> list[tuple[str, dict[str, Any]]]:
    """(file name, parsed TOML) for each default file of `role`."""
    return [(str(p), tomllib.loads(p.read_text("utf-8"))) for p in shipped_files(role)]
