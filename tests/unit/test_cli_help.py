"""Every subcommand explains itself: `--help` works for the tool and each command."""

from __future__ import annotations

import pytest

from agent.cli import COMMANDS, build_parser, main


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
