"""The README's promises hold: its exit-code table says what each command's `--help`
says, and its layout lists the top-level folders that exist (issue 8)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.unit._signatures import REPO

README = (REPO / "README.md").read_text()


def exit_table() -> dict[str, set[int]]:
    """command -> the exit codes the README gives it (a non-empty cell)."""
    rows: dict[str, set[int]] = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            codes = {code for code, cell in enumerate(cells[1:]) if cell}
            for command in re.findall(r"`(\w+)`", cells[0]):
                rows[command] = codes
    return rows


def help_codes(command: str) -> set[int]:
    """The codes the command's --help names after "Exit" or "exit"."""
    out = subprocess.run([sys.executable, "-m", "agent", command, "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    text = " ".join(out.split())
    said = text[re.search(r"\b[Ee]xit \d", text).start():]  # type: ignore[union-attr]
    said = said.split("positional arguments:")[0].split("options:")[0]
    return {int(n) for n in re.findall(r"(?<![\w.-])([0-3])(?=[ ,;)])", said)}


def test_the_table_covers_every_command() -> None:
    from agent.cli import COMMANDS

    assert set(exit_table()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(exit_table()))
def test_readme_exit_codes_are_the_ones_help_states(command: str) -> None:
    assert exit_table()[command] == help_codes(command)


def test_the_layout_lists_what_exists() -> None:
    block = README.split("## Layout", 1)[1].split("```")[1]
    listed = {line.split("/")[0] for line in block.splitlines() if "/" in line}
    tops = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")
            and p.name not in ("build", "nodewarden.egg-info") and any(p.iterdir())}
    assert listed == tops - {"__pycache__"}
