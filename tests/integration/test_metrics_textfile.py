"""The metrics textfile of a real `nodewarden run` (docs/deploy.md "Metrics"), reporting
to the real coordinator behind a real sshd: read with prometheus-client's text-format
parser, its values are the agent's own state, as its audit log, `cycle.json` and
`reporter.json` say it."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration._agent import auth_flood, running_agent, write_config
from tests.integration._coordinator import coordinator_toml, make_coordinator
from tests.integration._sshd import running_sshd
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts

#: a flood from here is planned (dry-run); one from the allowlisted address is refused by
#: block-addresses' preconditions: a guard denial
BLOCKED, ALLOWLISTED = "198.51.100.77", "198.51.100.99"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def read(path: Path) -> Samples | None:
    """The textfile's samples by (name, sorted labels); None while there is none yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_name(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name and v}


def outcome(record: dict[str, Any]) -> str:
    """An audit outcome record as docs/deploy.md names its outcomes."""
    if record["executed"]:
        return "ok" if record["ok"] else "failed"
    return "dry-run" if record["ok"] else "not-run"


def expected_counters(audit: list[dict[str, Any]]) -> tuple[dict[Any, float], dict[Any, float]]:
    actions = Counter(((("action", r["action"]), ("outcome", outcome(r))))
                      for r in audit if r["kind"] == "outcome")
    denials = Counter(((("guard", r["guard"]),),) for r in audit
                      if r["kind"] == "verdict" and r["allow"] is False)
    return ({k: float(n) for k, n in actions.items()},
            {k[0]: float(n) for k, n in denials.items()})


def firing_in(cycle: dict[str, Any]) -> dict[tuple[tuple[str, str], ...], float]:
    counts = Counter((("problem", f["problem"]), ("severity", f["severity"]))
                     for f in cycle["findings"])
    return {k: float(n) for k, n in counts.items()}


def test_the_textfile_is_the_agents_own_state(tmp_path: Path) -> None:
    coordinator = make_coordinator(tmp_path / "coordinator", ["agent1"])
    state, mail, config = tmp_path / "state", tmp_path / "mail.log", tmp_path / "agent.toml"
    textdir = tmp_path / "node-exporter"
    textdir.mkdir()
    textfile = textdir / "nodewarden.prom"
    mail.write_text("")
    with running_sshd(coordinator.authorized_keys) as server:
        known = tmp_path / "known_hosts"
        known.write_bytes(server.known_hosts.read_bytes())
        write_config(config, state, mail, kmsg=False, extra=f"""
[metrics]
textfile = "{textfile}"
textfile_interval_s = 1

[actions.block-addresses]
allowlist = ["{ALLOWLISTED}/32"]
""" + coordinator_toml("127.0.0.1", server.port, coordinator.keys["agent1"], known))
        with running_agent(tmp_path, config, state) as agent:
            started = json.loads((state / "cycle.json").read_text())["t"]
            with mail.open("a") as f:
                f.write(auth_flood(BLOCKED) + auth_flood(ALLOWLISTED))
            agent.wait_audit(lambda r: r["kind"] == "outcome" and r["subject"] == BLOCKED)
            agent.wait_audit(lambda r: r["kind"] == "verdict" and r["allow"] is False)

            def agrees() -> Samples | None:
                """The file shows both findings firing, as cycle.json does, and the
                reporter connected and answered. (Its spool depth is compared at stop:
                while it runs, a heartbeat may be waiting for its answer.)"""
                samples, cycle = read(textfile), json.loads((state / "cycle.json").read_text())
                if samples is None or len(cycle["findings"]) != 2:
                    return None
                firing = by_name(samples, "nodewarden_findings_firing")
                connected = samples.get(("nodewarden_reporter_connected", ()))
                acked = ("nodewarden_reporter_last_ack_timestamp_seconds", ()) in samples
                return samples if firing == firing_in(cycle) and connected == 1 and acked \
                    else None

            running = poll(agrees, 30)
            assert running is not None, (textfile.read_text(), agent.log())
            assert by_name(running, "nodewarden_findings_firing") == {
                (("problem", "auth-flood"), ("severity", "error")): 2.0}
            assert running[("nodewarden_reporter_last_ack_timestamp_seconds", ())] >= started
            assert running[("nodewarden_reporter_spool_depth", ())] >= 0
            assert agent.stop() == 0

    # stopped: the last file holds every event the audit log holds, and the reporter as
    # the agent left it
    final, audit = read(textfile), agent.audit()
    assert final is not None
    actions, denials = expected_counters(audit)
    assert actions and denials  # the run did plan one flood and deny the other
    assert by_name(final, "nodewarden_actions_total") == actions
    assert by_name(final, "nodewarden_guard_denials_total") == denials
    assert ((("guard", "preconditions"),) in denials
            or (("guard", "plan"),) in denials), denials
    reporter = json.loads((state / "reporter.json").read_text())
    assert final[("nodewarden_reporter_connected", ())] == 0 == int(reporter["connected"])
    assert final[("nodewarden_reporter_spool_depth", ())] == reporter["spool_depth"]
    assert final[("nodewarden_reporter_last_ack_timestamp_seconds", ())] == \
        reporter["last_ack"]
    cycle = json.loads((state / "cycle.json").read_text())
    assert started <= final[("nodewarden_last_cycle_timestamp_seconds", ())]
    assert final[("nodewarden_last_cycle_timestamp_seconds", ())] >= cycle["t"]
    assert final[("nodewarden_start_time_seconds", ())] <= started
    assert 0 <= final[("nodewarden_last_cycle_duration_seconds", ())] < 5
    assert by_name(final, "nodewarden_mode") == {(("mode", "dry-run"),): 1.0}
    text = textfile.read_text()
    assert BLOCKED not in text and ALLOWLISTED not in text  # subjects label nothing
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    assert os.listdir(textdir) == ["nodewarden.prom"]


def test_a_missing_directory_is_said_once_and_the_file_comes_when_it_can(
        tmp_path: Path) -> None:
    state, mail, config = tmp_path / "state", tmp_path / "mail.log", tmp_path / "agent.toml"
    mail.write_text("")
    textfile = tmp_path / "not-yet" / "nodewarden.prom"
    write_config(config, state, mail, kmsg=False, extra=f"""
[metrics]
textfile = "{textfile}"
textfile_interval_s = 1
""")
    with running_agent(tmp_path, config, state, watchdog_usec=1_000_000) as agent:
        agent.wait_log("cannot write the metrics textfile")
        # the loop goes on, and tries again every second without saying so again: six
        # watchdog pings (every 0.5 s, from the loop only) span at least two more tries
        pings = sum(m == "WATCHDOG=1" for m in agent.messages)
        agent.wait_notify(lambda _: sum(m == "WATCHDOG=1" for m in agent.messages)
                          >= pings + 6)
        textfile.parent.mkdir()
        agent.wait_log("written again")
        samples = read(textfile)
        assert samples is not None
        assert samples[("nodewarden_mode", (("mode", "dry-run"),))] == 1
        assert agent.proc.poll() is None
        assert agent.stop() == 0
    assert agent.log().count("cannot write the metrics textfile") == 1
