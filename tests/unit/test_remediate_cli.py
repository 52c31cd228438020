"""`nodewarden remediate`: dry-run runs nothing and prints exactly the plan --execute runs
(docs/architecture.md safety property 4), through the daemon's guard chain.

A recording stand-in for `systemctl` (a script that appends its argv to a file) is put
first on PATH; `remediate` runs steps with the operator's PATH, so `--execute` runs the
stand-in, never the machine's systemctl.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.cli import main as cli_main


def standin(tmp_path: Path) -> tuple[Path, Path]:
    """(bin dir with a recording `systemctl`, the file it appends argv lines to)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "systemctl.argv"
    script = bindir / "systemctl"
    script.write_text("#!/bin/sh\n"
                      f"{{ printf '%s' systemctl; for a in \"$@\"; do printf '\\t%s' \"$a\"; "
                      f"done; printf '\\n'; }} >> '{log}'\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bindir, log


def config_file(tmp_path: Path, mode: str = "enforce", extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nmode = "{mode}"\nhostname = "h1"\n'
                    f'state_dir = "{tmp_path / "state"}"\n'
                    f'signatures_dir = "{tmp_path / "sigs"}"\n{extra}')
    return path


def recorded(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split("\t") for line in log.read_text().splitlines()]


def remediate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(["remediate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir, log = standin(tmp_path)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def test_dry_run_runs_nothing_and_execute_runs_exactly_the_printed_plan(
    tmp_path: Path, on_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_file(tmp_path)
    code, out, _ = remediate(capsys, "restart-service", "--subject", "x.service", "--dry-run",
                             "--json", "--config", str(cfg))
    assert code == 0
    dry = json.loads(out)
    assert recorded(on_path) == []  # the stand-in was never called
    assert dry["allowed"] is True and dry["outcome"]["executed"] is False
    printed = [s["argv"] for s in dry["plan"]["steps"] + dry["plan"]["verify"]]
    assert printed == [["systemctl", "restart", "--", "x.service"],
                       ["systemctl", "is-active", "--quiet", "--", "x.service"]]

    code, out, _ = remediate(capsys, "restart-service", "--subject", "x.service", "--execute",
                             "--json", "--config", str(cfg))
    assert code == 0
    done = json.loads(out)
    assert done["plan"] == dry["plan"]  # one Plan value, printed and run
    assert recorded(on_path) == printed  # the stand-in got exactly the printed argv
    assert done["outcome"]["ok"] is True and done["outcome"]["executed"] is True


def test_text_dry_run_prints_the_plan_and_every_verdict(
    tmp_path: Path, on_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = remediate(capsys, "restart-service", "--subject", "x.service",
                             "--config", str(config_file(tmp_path)))
    assert code == 0
    assert "  1. systemctl restart -- x.service   (timeout 90s)" in out
    for guard in ("mode", "trust", "maintenance", "cooldown", "budget", "flapping",
                  "approval", "preconditions", "lease"):
        assert f"allow {guard}: " in out
    assert recorded(on_path) == []


def test_execute_is_counted_by_the_budget_like_the_daemons_actions(
    tmp_path: Path, on_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_file(tmp_path, extra='[guards.budget]\nrestart-service = { max = 1, '
                                      'window_s = 3600 }\n')
    args = ("restart-service", "--subject", "x.service", "--execute", "--json",
            "--config", str(cfg))
    assert remediate(capsys, *args)[0] == 0
    code, out, _ = remediate(capsys, *args)
    assert code == 1
    report = json.loads(out)
    (deny,) = [v for v in report["verdicts"] if not v["allow"]]
    assert deny["guard"] == "budget" and "1 of 1 restart-service" in deny["reason"]
    assert len(recorded(on_path)) == 2  # only the first run (restart + verify)


def test_node_restart_is_denied_without_a_coordinator_and_nothing_runs(
    tmp_path: Path, on_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = remediate(capsys, "node-restart", "--execute", "--config",
                             str(config_file(tmp_path)))
    assert code == 1
    assert "DENY  lease: node-restart needs a lease" in out and "no coordinator" in out
    assert "denied by lease: nothing was run" in out
    assert recorded(on_path) == []


def test_a_failing_step_exits_1_with_the_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text("#!/bin/sh\necho 'Unit x.service not found.' >&2\n"
                                      "exit 5\n")
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    code, out, _ = remediate(capsys, "restart-service", "--subject", "x.service",
                             "--execute", "--config", str(config_file(tmp_path)))
    assert code == 1
    assert "outcome: FAILED: step 1 of 1 failed: restart x.service exit 5" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["no-such-action", "--subject", "x"], "unknown action 'no-such-action'; known: "),
    (["restart-service", "--subject", "x", "--param", "colour=red"],
     "unknown parameter 'colour'"),
    (["restart-service", "--subject", "x", "--param", "novalue"], "must be KEY=VALUE"),
    (["restart-service"], "restart-service needs --subject"),
    (["exec", "--subject", "x"], "parameter 'command' is required"),
    (["restart-service", "--subject=-x.service"], "is not a unit name"),
])
def test_bad_usage_exits_2_and_says_what(
    tmp_path: Path, on_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
    message: str,
) -> None:
    code, _, err = remediate(capsys, *argv, "--config", str(config_file(tmp_path)))
    assert code == 2
    assert message in err
    assert recorded(on_path) == []


def test_unknown_action_lists_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, err = remediate(capsys, "reboot", "--config", str(config_file(tmp_path)))
    assert "restart-service" in err and "node-restart" in err and "block-addresses" in err


def test_a_bad_configuration_is_refused_with_file_key_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_file(tmp_path, mode="sometimes")
    code, _, err = remediate(capsys, "restart-service", "--subject", "x.service",
                             "--config", str(cfg))
    assert code == 2
    assert f"{cfg}: agent.mode: must be one of observe, dry-run, enforce" in err


def _audit(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "state" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_operators_execute_is_in_the_audit_log_with_its_verdicts(
    tmp_path: Path, on_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator's request leaves what the daemon's own actions leave: every guard's
    verdict, the plan and the outcome, marked as the operator's and by whom."""
    monkeypatch.setenv("SUDO_USER", "alice")
    code, _out, _ = remediate(capsys, "restart-service", "--subject", "x.service",
                              "--execute", "--config", str(config_file(tmp_path)))
    assert code == 0
    records = _audit(tmp_path)
    verdicts = [r for r in records if r["kind"] == "verdict"]
    assert {r["guard"] for r in verdicts} >= {"mode", "budget", "cooldown", "lease"}
    assert all(r["allow"] and r["origin"] == "operator" and r["by"] == "alice"
               for r in verdicts)
    (plan,) = [r for r in records if r["kind"] == "plan"]
    assert plan["execute"] is True and plan["steps"] == [
        ["systemctl", "restart", "--", "x.service"]]
    (outcome,) = [r for r in records if r["kind"] == "outcome"]
    assert outcome["ok"] is True and outcome["executed"] is True and outcome["host"] == "h1"
    # and `status` shows it among the last actions, from the same log
    assert cli_main(["status", "--json", "--config", str(tmp_path / "agent.toml")]) == 0
    last = json.loads(capsys.readouterr().out)["last_actions"]
    assert [(a["action"], a["origin"], a["by"]) for a in last] == [
        ("restart-service", "operator", "alice")]


def test_a_denied_operator_request_is_audited_too(
    tmp_path: Path, on_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, _ = remediate(capsys, "node-restart", "--execute", "--config",
                              str(config_file(tmp_path)))
    assert code == 1
    records = _audit(tmp_path)
    denied = [r for r in records if r["kind"] == "verdict" and not r["allow"]]
    assert [r["guard"] for r in denied] == ["lease"]
    assert not [r for r in records if r["kind"] in ("plan", "outcome")]
    assert recorded(on_path) == []
