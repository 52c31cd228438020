"""ansible/ passes ansible-lint's production profile (issue 10): fully qualified module
names, named tasks, argument specs, modes on every file a task writes, no risky shell."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "ansible-lint"


def test_the_roles_and_playbooks_pass_the_production_profile() -> None:
    assert LINT.exists(), f"{LINT} missing: pip install -e '.[test]'"
    done = subprocess.run([str(LINT), "--offline", "--profile", "production", "--nocolor",
                           "ansible/"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Passed" in done.stdout + done.stderr
