"""`nodewarden status`, `maintenance` and `approve`: what they write is what the guards
read, and `status` shows what the daemon left in the state directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as cli_main
from agent.clock import FakeClock
from agent.config import load_config
from agent.guards.stateful import ApprovalGuard, MaintenanceGuard
from agent.model import LogLine, Proposal
from agent.pipeline.build import build_pipeline
from agent.state import SafetyState


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nrole = "storage"\nhostname = "nas-a1"\n'
                    f'state_dir = "{tmp_path / "state"}"\n'
                    f'signatures_dir = "{tmp_path / "sigs"}"\n{extra}')
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def state(tmp_path: Path) -> SafetyState:
    return SafetyState(tmp_path / "state", now=time.time())


def proposal(**kw: Any) -> Proposal:
    kw.setdefault("problem", "storage-hang")
    return Proposal(action=kw.pop("action", "restart-service"),
                    subject=kw.pop("subject", "nfs-server.service"), **kw)


# --------------------------------------------------------------------------- maintenance
def test_maintenance_on_is_what_the_guard_denies_with_and_off_allows_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    cfg = str(config_file(tmp_path))
    code, out, _ = cli(capsys, "maintenance", "on", "--for", "2h", "--reason",
                       "firmware upgrade", "--config", cfg)
    assert code == 0 and "maintenance on until" in out and "firmware upgrade" in out
    guard = MaintenanceGuard(state(tmp_path))
    verdict = guard.check(proposal(), time.time())
    assert not verdict.allow and "firmware upgrade" in verdict.reason and "alice" in verdict.reason
    code, out, _ = cli(capsys, "maintenance", "status", "--json", "--config", cfg)
    got = json.loads(out)
    assert code == 0 and got["on"] is True and got["by"] == "alice"
    assert got["until"] - got["since"] == pytest.approx(7200)
    assert cli(capsys, "maintenance", "off", "--config", cfg)[0] == 0
    assert MaintenanceGuard(state(tmp_path)).check(proposal(), time.time()).allow


@pytest.mark.parametrize(("argv", "message"), [
    (["on", "--reason", "x"], "on needs --for DURATION and --reason TEXT"),
    (["on", "--for", "2h"], "on needs --for DURATION and --reason TEXT"),
    (["on", "--for", "soon", "--reason", "x"], "is not a duration"),
    (["off", "--for", "2h"], "--for and --reason go with 'on'"),
])
def test_maintenance_bad_usage_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = cli(capsys, "maintenance", *argv, "--config", str(config_file(tmp_path)))
    assert code == 2 and message in err
    assert state(tmp_path).maintenance(time.time()) is None


def test_clear_history_lifts_the_fault_the_budget_guard_denies_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "history.jsonl").write_text("{not json\n")
    assert state(tmp_path).history_fault is not None
    code, out, _ = cli(capsys, "maintenance", "clear-history", "--config",
                       str(config_file(tmp_path)))
    assert code == 0 and "history fault cleared" in out
    assert state(tmp_path).history_fault is None


# --------------------------------------------------------------------------- approve
def test_approve_records_what_the_approval_guard_consumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(config_file(tmp_path))
    needs = proposal(action="node-restart", subject="nas-a1", needs_approval=True)
    assert not ApprovalGuard(state(tmp_path)).check(needs, time.time()).allow
    code, out, _ = cli(capsys, "approve", "node-restart", "--subject", "nas-a1", "--for",
                       "30m", "--json", "--config", cfg)
    assert code == 0
    got = json.loads(out)
    assert got["expires_at"] - got["granted_at"] == pytest.approx(1800)
    s = state(tmp_path)
    assert ApprovalGuard(s).check(needs, time.time()).allow
    s.record_execution("node-restart", "nas-a1", time.time())  # one approval, one run
    assert not ApprovalGuard(state(tmp_path)).check(needs, time.time()).allow


@pytest.mark.parametrize(("argv", "message"), [
    (["reboot-now", "--subject", "x"], "unknown action 'reboot-now'"),
    (["page", "--subject", "x", "--for=-1h"], "is not a duration"),
    (["page", "--subject", " "], "--subject must not be empty"),
])
def test_approve_bad_usage_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = cli(capsys, "approve", *argv, "--config", str(config_file(tmp_path)))
    assert code == 2 and message in err


# --------------------------------------------------------------------------- status
def test_status_shows_findings_ladders_budgets_maintenance_and_last_actions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_file(tmp_path, '[guards.budget]\nrestart-service = { max = 1, '
                                'window_s = 3600 }\n')
    loaded, _errors = load_config(cfg)
    assert loaded is not None
    config = loaded.config
    now = time.time()
    clock = FakeClock(now)
    # what the daemon leaves behind: a cycle with a finding and a ladder position,
    # an execution in the history, and an outcome in the audit log
    pipeline = build_pipeline(config, clock, check_preconditions=False,
                              catalog=loaded.catalog)
    pipeline.observe(LogLine("kmsg", "INFO: task nfsd:1234 blocked for more than 120 "
                             "seconds.", now, facility=0))
    pipeline.decide(now)
    pipeline.state.record_execution("restart-service", "nfs-server.service", now - 60,
                                    problem="hung-task", finding_subject="nfsd")
    (tmp_path / "state" / "audit.jsonl").write_text(json.dumps({
        "t": now - 60, "kind": "outcome", "action": "restart-service",
        "subject": "nfs-server.service", "ok": True, "executed": True,
        "detail": "1 step(s) ok"}) + "\n")
    assert cli(capsys, "maintenance", "on", "--for", "1h", "--reason", "disk swap",
               "--config", str(cfg))[0] == 0

    code, out, _ = cli(capsys, "status", "--json", "--config", str(cfg))
    assert code == 1  # findings are firing
    s = json.loads(out)
    assert s["sentence"].startswith("acting: restart-service nfs-server.service (dry-run)")
    assert [(f["problem"], f["subject"]) for f in s["findings"]] == [("hung-task", "nfsd")]
    assert [(x["problem"], x["next_rung"], x["rungs"]) for x in s["ladders"]] == [
        ("hung-task", 2, 2)]
    budget = next(b for b in s["budgets"] if b["action"] == "restart-service")
    assert (budget["used"], budget["limit"], budget["exhausted"]) == (1, 1, True)
    assert (budget["per"], budget["problem"]) == ("problem", "hung-task")
    assert budget["next_allowed"] == pytest.approx(now - 60 + 3600)
    assert [c["action"] for c in s["cooldowns"]] == ["restart-service"]
    assert s["maintenance"]["on"] is True and s["maintenance"]["reason"] == "disk swap"
    assert [(a["action"], a["ok"]) for a in s["last_actions"]] == [("restart-service", True)]

    code, text, _ = cli(capsys, "status", "--config", str(cfg))
    assert code == 1
    for needle in ("hung-task nfsd (error)", "rung 2 of 2",
                   "restart-service for hung-task: 1/1 per 1h", "maintenance on until",
                   "disk swap", "last actions: 1"):
        assert needle in text


def test_status_without_a_running_daemon_says_so_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "status", "--config", str(config_file(tmp_path)))
    assert code == 0
    assert "no cycle recorded" in out and "maintenance off" in out


def test_status_refuses_a_bad_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_file(tmp_path, "[guards.cooldown]\ndefault_s = -5\n")
    code, _, err = cli(capsys, "status", "--config", str(cfg))
    assert code == 2
    assert f"{cfg}: guards.cooldown.default_s: must be at least 0.0" in err


def test_actions_settings_with_an_unknown_key_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_file(tmp_path, '[actions.page]\ncomand = ["/bin/true"]\n')
    code, _, err = cli(capsys, "status", "--config", str(cfg))
    assert code == 2
    assert "actions.page.comand: unknown setting for page" in err
