"""`[coordinator]` (agent/report/settings.py): none means alone; a bad value is refused
with file, key and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config

GOOD = {"host": "coord.example.net", "key_file": "/etc/nodewarden/id_ed25519",
        "known_hosts": "/etc/nodewarden/known_hosts"}


def test_no_table_no_reporter() -> None:
    config, errors = parse_config({}, "agent.toml")
    assert not errors and config.coordinator is None


def test_a_good_table() -> None:
    config, errors = parse_config({"coordinator": {**GOOD, "port": 2222,
                                                   "heartbeat_s": 10}}, "agent.toml")
    assert not errors and config.coordinator is not None
    assert config.coordinator.port == 2222 and config.coordinator.heartbeat_s == 10
    assert config.coordinator.key_file == Path("/etc/nodewarden/id_ed25519")


@pytest.mark.parametrize(("over", "key", "reason"), [
    ({"host": "coord example"}, "coordinator.host", "not a host name"),
    ({"host": ""}, "coordinator.host", "not a host name"),
    ({"key_file": "id_ed25519"}, "coordinator.key_file", "absolute"),
    ({"known_hosts": "known"}, "coordinator.known_hosts", "absolute"),
    ({"user": "root; rm"}, "coordinator.user", "not a user name"),
    ({"heartbeat_s": float("nan")}, "coordinator.heartbeat_s", "finite"),
    ({"port": 70000}, "coordinator.port", "at most"),
    ({"window": 0}, "coordinator.window", "at least"),
    ({"hots": "x"}, "coordinator.hots", "unknown key"),
])
def test_bad_values_are_refused_with_the_key(over: dict[str, Any], key: str,
                                             reason: str) -> None:
    _config, errors = parse_config({"coordinator": {**GOOD, **over}}, "agent.toml")
    assert any(e.file == "agent.toml" and e.key == key and reason in e.reason
               for e in errors), errors
