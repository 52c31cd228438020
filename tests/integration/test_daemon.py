"""`nodewarden run` as a real process: real /dev/kmsg, a real followed log file, real
signals, its real sd_notify messages (to a socket the test binds) and its audit log."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration._agent import (
    auth_flood,
    findings,
    hung_task_line,
    running_agent,
    token,
    write_config,
    write_kmsg,
)

pytestmark = pytest.mark.realparts


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config file, state dir, followed mail log) under a temp dir."""
    state = tmp_path / "state"
    mail = tmp_path / "mail.log"
    mail.write_text("")
    config = tmp_path / "agent.toml"
    write_config(config, state, mail)
    return config, state, mail


def test_runs_with_built_in_defaults_and_a_temp_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{state}"\n')
    with running_agent(tmp_path, config, state, watchdog_usec=1_000_000) as agent:
        status = agent.wait_notify(lambda m: "READY=1" in m)
        # "acting: ..." too: the ring may hold a real OOM kill another test provoked
        # minutes ago (dry-run: planned, not run)
        assert "STATUS=no action: " in status or "STATUS=acting: " in status
        if "STATUS=no action: " in status:  # (an acting sentence is cut before the load)
            assert "findings firing; load1 " in status or "finding firing; load1 " in status
        # the loop keeps turning: it pings the watchdog (every 0.5 s) again and again
        def three_pings(_: str) -> bool:
            return sum(m == "WATCHDOG=1" for m in agent.messages) >= 3

        agent.wait_notify(three_pings)
        assert agent.proc.poll() is None
        assert (state.stat().st_mode & 0o777) == 0o700
        log = agent.log()
        assert "started in dry-run mode" in log
        assert agent.stop() == 0
    assert "STOPPING=1" in agent.messages


def test_userspace_kernel_line_is_an_untrusted_finding_and_nothing_runs(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, state, _ = setup
    task = token()
    with running_agent(tmp_path, config, state) as agent:
        write_kmsg(hung_task_line(task))
        rec = agent.wait_audit(lambda r: r.get("kind") == "finding" and r.get("subject") == task)
        assert rec["problem"] == "hung-task"
        assert rec["trusted"] is False
        assert rec["host"]
        # a second line: by the time it is recorded, the loop has decided on the first
        later = token()
        write_kmsg(hung_task_line(later))
        agent.wait_audit(lambda r: r.get("subject") == later)
        assert agent.stop() == 0
    records = agent.audit()
    assert not [r for r in records if r.get("kind") == "outcome" and r.get("executed")]
    mine = [r for r in records if task in json.dumps(r) and r["kind"] in ("plan", "outcome")]
    assert mine == []
    assert not [r for r in records if r.get("kind") == "verdict" and r.get("allow")
                and r.get("problem") == "hung-task" and r.get("subject") == task]


def test_sighup_with_a_broken_config_keeps_the_old_one_and_a_good_one_applies(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, state, mail = setup
    with running_agent(tmp_path, config, state) as agent:
        good = config.read_text()
        config.write_text(good.replace("[kmsg]\n", '[kmsg]\ncolour = "blue"\n').replace(
            "sample_interval_s = 0.5", 'sample_interval_s = "fast"'))
        agent.signal(signal.SIGHUP)
        log = agent.wait_log("reload refused: 2 error(s)")
        assert f"{config}: kmsg.colour: unknown key" in log
        assert f"{config}: agent.sample_interval_s: must be a finite number" in log
        assert agent.proc.poll() is None
        # the old configuration still runs: a kernel line is still seen
        task = token()
        write_kmsg(hung_task_line(task))
        agent.wait_audit(lambda r: r.get("kind") == "finding" and r.get("subject") == task)
        note = agent.wait_audit(lambda r: r.get("kind") == "note"
                                and "reload refused" in str(r.get("text")))
        assert any("kmsg.colour" in e for e in note["errors"])

        # a valid configuration follows another mail log: the new one is read
        mail2 = tmp_path / "mail2.log"
        mail2.write_text("")
        write_config(config, state, mail2)
        agent.signal(signal.SIGHUP)
        agent.wait_log(f"log:mail: following {mail2}")
        addr = "192.0.2.77"
        with mail.open("a") as f:  # the old file is no longer followed
            f.write(auth_flood("192.0.2.78"))
        with mail2.open("a") as f:
            f.write(auth_flood(addr))
        rec = agent.wait_audit(lambda r: r.get("kind") == "finding" and r.get("subject") == addr)
        assert rec["problem"] == "auth-flood"
        assert agent.stop() == 0
    assert not findings(agent.audit(), "192.0.2.78")


def test_sigterm_saves_the_kmsg_position_and_a_restart_does_not_repeat_a_record(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, state, _ = setup
    task = token()
    with running_agent(tmp_path, config, state) as agent:
        write_kmsg(hung_task_line(task))
        agent.wait_audit(lambda r: r.get("kind") == "finding" and r.get("subject") == task)
        assert agent.stop() == 0
    assert "SIGTERM: stopping" in agent.log()
    position = json.loads((state / "kmsg-position.json").read_text())
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert position["boot_id"] == boot_id
    assert len(findings(agent.audit(), task)) == 1

    marker = token()
    with running_agent(tmp_path, config, state) as again:
        assert "resuming after seq" in again.log()
        write_kmsg(hung_task_line(marker))
        again.wait_audit(lambda r: r.get("subject") == marker)
        assert again.stop() == 0
    assert len(findings(again.audit(), task)) == 1  # not reported a second time
    after = json.loads((state / "kmsg-position.json").read_text())
    assert after["seq"] > position["seq"]


def test_a_line_appended_to_the_mail_log_is_matched(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    config, state, mail = setup
    addr = "198.51.100.23"
    with running_agent(tmp_path, config, state) as agent:
        with mail.open("a") as f:
            f.write("Nov 25 13:00:00 mx1 postfix/qmgr[11]: 4F2A: removed\n")  # no match
            f.write(auth_flood(addr))
        rec = agent.wait_audit(lambda r: r.get("kind") == "finding" and r.get("subject") == addr)
        assert rec["problem"] == "auth-flood"  # the mail role's rule over auth-failure lines
        assert rec["count"] >= 20
        assert rec.get("trusted", True) is True  # log files are not spoofable kernel lines
        assert agent.stop() == 0
    assert "finding auth-flood 198.51.100.23" in agent.log()


def test_a_node_restart_intent_from_the_previous_boot_is_reconciled_at_start(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    """Safety state first (docs/architecture.md, convention 9): the agent records that it rebooted
    on purpose."""
    from agent.execute.intent import read_intents, write_intent

    config, state, _ = setup
    intent = write_intent(state, "node-restart", "host", "hung nfsd; restart the node",
                          now=1_700_000_000.0, boot_id="0" * 32)
    with running_agent(tmp_path, config, state) as agent:
        rec = agent.wait_audit(lambda r: r.get("kind") == "outcome"
                               and r.get("intent") == intent.id)
        assert rec["action"] == "node-restart"
        assert rec["ok"] is True
        assert "rebooted" in rec["detail"]
        assert agent.stop() == 0
    (done,) = read_intents(state)
    assert not done.pending
    assert done.outcome == "rebooted"


def test_the_lease_of_a_restart_is_left_to_run_out_by_an_agent_without_a_coordinator(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    """The restart ran under a coordinator's lease, and the configuration no longer names
    one: after the reconcile the agent says so (log and audit) and gives nothing back."""
    from agent.execute.intent import read_intents, write_intent

    config, state, _ = setup
    intent = write_intent(state, "node-restart", "host", "hung nfsd", now=1_700_000_000.0,
                          boot_id="0" * 32, lease="17", coordinator="10.231.1.1:22",
                          lease_expires_at=1_700_000_900.0)
    with running_agent(tmp_path, config, state) as agent:
        rec = agent.wait_audit(lambda r: r.get("kind") == "note" and r.get("lease") == "17")
        assert rec["intent"] == intent.id and rec["released"] is False
        assert rec["text"].endswith("this agent now runs without a coordinator")
        assert "lease 17 for node-restart host from the coordinator at 10.231.1.1:22" in (
            agent.log())
        assert agent.stop() == 0
    kinds = [(r.get("kind"), r.get("intent")) for r in agent.audit()]
    # reconciled first, then what became of its lease
    assert kinds.index(("outcome", intent.id)) < kinds.index(("note", intent.id))
    (done,) = read_intents(state)
    assert done.lease_outcome == ("left to run out by its TTL: this agent now runs "
                                  "without a coordinator")


def test_a_first_run_tells_what_it_sees_and_that_the_mail_log_is_missing(
    tmp_path: Path,
) -> None:
    """Issue 8: after "started" the log says what the agent read and that the followed
    file is not there (a warning once, not every sample); when the file appears and when
    a finding fires, a new line says so."""
    state, mail = tmp_path / "state", tmp_path / "mail.log"  # not created: missing
    config = tmp_path / "agent.toml"
    write_config(config, state, mail)
    warning = (f"WARNING nodewarden: log:mail: {mail} does not exist: it will be read from "
               "its beginning when it appears")
    with running_agent(tmp_path, config, state, watchdog_usec=400_000) as agent:
        first = agent.wait_log("seeing: ")
        line = next(x for x in first.splitlines() if "seeing: " in x)
        assert line.index("seeing: ") > 0 and first.index("started in dry-run mode") < (
            first.index("seeing: "))
        assert " kernel record" in line and " read, 0 lines from 1 log" in line
        assert f"log mail: {mail} not there yet" in line
        assert line.endswith("dry-run: nothing is executed")

        # many loop turns later (the watchdog pings every 0.2 s), said once only
        def pings(n: int) -> Callable[[str], bool]:
            return lambda _: sum(m == "WATCHDOG=1" for m in agent.messages) >= n

        agent.wait_notify(pings(15))
        assert agent.log().count(warning) == 1

        mail.write_text("Nov 25 13:00:00 mx1 postfix/qmgr[11]: 4F2A: removed\n")
        agent.wait_log("from 1 log; load1")  # a line without "not there yet"
        appeared = [x for x in agent.log().splitlines() if "seeing: " in x][-1]
        assert "not there yet" not in appeared

        def firing() -> list[int]:  # the ring may hold other tests' findings
            return [int(m) for m in re.findall(r"seeing: (\d+) findings? firing", agent.log())]

        before = firing()[-1] if firing() else 0
        write_kmsg(hung_task_line(token()))
        agent.wait_log(f"seeing: {before + 1} finding")

        missing = tmp_path / "mail2.log"  # a reload to a file that is not there says so
        write_config(config, state, missing)
        agent.signal(signal.SIGHUP)
        agent.wait_log(f"log:mail: {missing} does not exist: it will be read from its "
                       "beginning when it appears")
        assert agent.log().count(warning) == 1
        assert agent.stop() == 0
