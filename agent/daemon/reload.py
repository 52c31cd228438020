"""SIGHUP: what a reload keeps and what it says (docs/running.md "Signals").

The daemon validates the whole new configuration with the same load_config() as start-up;
these pure helpers decide what of it applies and write the audit notes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from agent.config import Config, Loaded
from agent.pipeline.api import Event
from agent.schema import ConfigError

log = logging.getLogger("nodewarden")

#: Config fields the sources own; a reload that changes only these keeps the pipeline
SOURCE_FIELDS = frozenset({"kmsg", "logs", "metrics", "udev", "probes", "sources"})


def keep_state_dir(loaded: Loaded, old: Config) -> Loaded:
    """agent.state_dir cannot change while running: the old one stays, with a warning."""
    new = loaded.config
    if new.agent.state_dir == old.agent.state_dir:
        return loaded
    log.warning("agent.state_dir changed to %s: takes effect at the next restart; "
                "still using %s", new.agent.state_dir, old.agent.state_dir)
    new = dataclasses.replace(
        new, agent=dataclasses.replace(new.agent, state_dir=old.agent.state_dir))
    return dataclasses.replace(loaded, config=new)


def refused_note(errors: Sequence[ConfigError], now: float) -> Event:
    for err in errors:
        log.error("reload refused: %s", err)
    text = (f"reload refused: {len(errors)} error(s) in the configuration; "
            "still running the previous one")
    return Event(now, "note", {"text": text, "errors": [str(e) for e in errors]})


def reloaded_note(new: Config, old: Config, changes: list[str], kept: bool,
                  now: float) -> Event:
    what = "changed" if decision_part(new) != decision_part(old) else "unchanged"
    changes = [*changes, f"pipeline rebuilt (mode {new.agent.mode}, policy settings {what}; "
               f"{'findings kept' if kept else 'rules changed: findings start over'})"]
    text = f"reloaded {', '.join(new.sources)}: " + "; ".join(changes)
    return Event(now, "note", {"text": text})


def decision_part(config: Config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in SOURCE_FIELDS}
