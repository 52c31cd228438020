"""What the running agent carries (issue 8: ≤ 25 MiB RSS in all): the daemon's start-up
path and a dry-run decision import none of the heavy modules it does not use. Each
costs RSS for the life of the process (docs/architecture.md "Figures")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit._signatures import REPO

#: module -> why the daemon must not carry it at start
NOT_AT_START = {
    "psutil": "only the stop-process helper and never-block lookups read processes",
    "tenacity": "only a failed source's reopen and verify polls retry",
    "ssl": "only a probe with TLS needs it",
    "asyncio": "nothing here is async",
    "paramiko": "the reporter (issue 9) imports it lazily",
    "http.client": "only an HTTP probe needs it",
    "hashlib": "it loads OpenSSL (3.4 MiB): the caches digest with the built-in BLAKE2",
    "tempfile": "importlib.resources and its kin: the built-in files are read by path",
    "zipfile": "importlib.resources and its kin: the built-in files are read by path",
    "uuid": "it imports platform: an intent id is 4 random bytes",
    "re2": "the cached catalog's regexes compile on a line's first confirm (1.9 MiB)",
}

START = """
import json, sys
from agent.clock import SystemClock
from agent.config import load_config
from agent.daemon.execution import build_pipeline
from agent.daemon.loop import Daemon
from agent.daemon.watchdog import NullNotifier
from agent.execute.executor import Executor
from agent.execute.runner import RecordingRunner
from agent.model import Plan, Step

loaded, errors = load_config(sys.argv[1])
assert loaded is not None, errors
build_pipeline(loaded, SystemClock())
Daemon(loaded, reload_config=lambda: load_config(sys.argv[1]), clock=SystemClock(),
       notifier=NullNotifier(), watchdog_interval_s=None)
step = Step(("systemctl", "restart", "--", "x.service"), 5.0)
Executor(RecordingRunner(), SystemClock()).run(Plan("restart-service", "x.service",
                                                    (step,), verify=(step,)))
print(json.dumps(sorted(sys.modules)))
"""


def test_the_daemon_starts_without_the_heavy_modules_it_does_not_use(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n', encoding="utf-8")
    for _start in ("the first fills the catalog cache", "the second is measured"):
        out = subprocess.run([sys.executable, "-c", START, str(config)], cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=120)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert {m: why for m, why in NOT_AT_START.items() if m in loaded} == {}
    assert "agent.daemon.loop" in loaded  # it did load the daemon: the check can fail
