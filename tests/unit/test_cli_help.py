"""Every subcommand explains itself: `--help` works for the tool and each command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import COMMANDS, build_parser, main
from tests.unit._signatures import REPO


def test_every_command_is_registered() -> None:
    _, modules = build_parser()
    assert sorted(modules) == sorted(COMMANDS)


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_prints_and_exits_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: nodewarden" in out
    assert len(out) > 200


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_a_command_imports_only_its_own_module(tmp_path: Path) -> None:
    """`nodewarden scan` loads agent.commands.scan and none of the other commands'
    modules (nor the daemon, nor the configuration): start-up is paid per command."""
    (tmp_path / "empty.log").write_bytes(b"")
    (tmp_path / "sigs").mkdir()
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['nodewarden', 'scan', sys.argv[1], '--signatures-dir', sys.argv[2]]\n"
        "try:\n"
        "    runpy.run_module('agent', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('agent'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "empty.log"),
                           str(tmp_path / "sigs")], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=True,
                          env=dict(os.environ, NODEWARDEN_CACHE="off"))
    loaded = set(done.stdout.split())
    assert "agent.commands.scan" in loaded
    others = {f"agent.commands.{c}" for c in COMMANDS if c != "scan"}
    assert loaded & others == set()
    assert not any(m.startswith(("agent.daemon", "agent.pipeline")) for m in loaded)
    assert "agent.config" not in loaded


def test_only_the_named_command_is_registered() -> None:
    _, modules = build_parser("scan")
    assert list(modules) == ["scan"]
    _, modules = build_parser("no-such-command")
    assert sorted(modules) == sorted(COMMANDS)


def test_a_misspelt_command_is_refused_with_every_choice(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["scna"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "simulate" in err
