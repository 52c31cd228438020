"""A real `nodewarden run` agent reporting to the real coordinator behind a real sshd:
its hello and heartbeats arrive, a finding from its mail log reaches the store, and
`nodewarden status` shows the reporter connected with nothing waiting."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration._agent import auth_flood, nodewarden_bin, running_agent, write_config
from tests.integration._coordinator import coordinator_toml, make_coordinator
from tests.integration._sshd import running_sshd
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts


def test_a_running_agent_reports_its_findings_to_the_coordinator(tmp_path: Path) -> None:
    coordinator = make_coordinator(tmp_path / "coordinator", ["agent1"])
    state, mail, config = tmp_path / "state", tmp_path / "mail.log", tmp_path / "agent.toml"
    mail.write_text("")
    with running_sshd(coordinator.authorized_keys) as server:
        known = tmp_path / "known_hosts"
        known.write_bytes(server.known_hosts.read_bytes())
        write_config(config, state, mail, kmsg=False, extra=coordinator_toml(
            "127.0.0.1", server.port, coordinator.keys["agent1"], known))
        with running_agent(tmp_path, config, state) as agent:
            with mail.open("a") as f:
                f.write(auth_flood("198.51.100.77"))

            def reported() -> list[dict[str, object]] | None:
                found = [json.loads(m[4]) for m in coordinator.messages("agent1")
                         if m[2] == "finding"]
                return [f for f in found if f.get("subject") == "198.51.100.77"] or None

            finding = poll(reported, 30)
            assert finding and finding[0]["problem"] == "auth-flood"
            assert "host" not in finding[0]  # the session knows who it is
            kinds = {m[2] for m in coordinator.messages("agent1")}
            assert {"hello", "heartbeat", "finding"} <= kinds
            def drained() -> dict[str, object] | None:
                reporter = _status(config).get("reporter")
                assert isinstance(reporter, dict)
                return reporter if reporter.get("connected") and \
                    reporter.get("spool_depth") == 0 else None

            reporter = poll(drained, 30)
            assert reporter is not None and reporter["last_ack"] is not None
            assert agent.stop() == 0
        assert "reporting to root@127.0.0.1" in agent.log()


def _status(config: Path) -> dict[str, object]:
    done = subprocess.run([nodewarden_bin(), "status", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    result: dict[str, object] = json.loads(done.stdout)
    return result
