"""Issue 7 on a real kernel: a process OOM-killed for real, once in a user's session scope
under a name like a system unit, once in a `.service` of system.slice. The agent, following
the real kernel log in dry-run, plans only a page for the first and a restart of that
`.service` for the second: a process name never names a unit; the kernel's report does.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.integration._agent import running_agent, token
from tests.integration._memcg import memory_limited, oom_kill

pytestmark = pytest.mark.realparts


def config(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
state_dir = "{state}"
role = "generic"
mode = "dry-run"
sample_interval_s = 0.5

[kmsg]
enabled = true

[logs]

[udev]
enabled = false
""")
    return path, state


def plans(records: list[dict[str, Any]], **match: object) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "plan"
            and all(r.get(k) == v for k, v in match.items())]


def test_a_real_oom_kill_is_placed_by_the_kernels_report_not_by_a_name(tmp_path: Path) -> None:
    tok = token()
    uid = random.randrange(61000, 64000)  # a user slice no real user has
    scope = f"user.slice/user-{uid}.slice/session-{tok}.scope"
    service = f"{tok}.service"
    path, state = config(tmp_path)
    with running_agent(tmp_path, path, state) as agent:
        with memory_limited(scope) as cg:
            user_pid = oom_kill(cg, "reboot.target")
        page = agent.wait_audit(lambda r: r.get("kind") == "plan" and r.get("action") == "page"
                                and r.get("problem") == "oom-kill-no-unit"
                                and r.get("finding_subject") == f"user-{uid}.slice", 60)
        assert page["execute"] is False  # dry-run: shown, not run
        with memory_limited(f"system.slice/{service}") as cg:
            service_pid = oom_kill(cg, tok[:15])
        restart = agent.wait_audit(lambda r: r.get("kind") == "plan"
                                   and r.get("action") == "restart-service"
                                   and r.get("subject") == service, 60)
        assert restart["steps"] == [["systemctl", "restart", "--", service]]
        assert restart["problem"] == "oom-kill" and restart["execute"] is False
        agent.stop()
    records = agent.audit()
    # the kill in the user's scope: a finding that names the task in its evidence, a page,
    # and nothing aimed at reboot.target
    [finding] = [r for r in records if r.get("kind") == "finding"
                 and r.get("problem") == "oom-kill-no-unit"
                 and r.get("subject") == f"user-{uid}.slice"]
    assert finding["trusted"] is True
    assert any(f"Killed process {user_pid} (reboot.target)" in e for e in finding["evidence"])
    assert not [r for r in plans(records) if "reboot.target" in str(r.get("steps"))]
    assert not plans(records, problem="oom-kill-no-unit", action="restart-service")
    # the kill in the service: placed by its cgroup, tied to its pid
    [placed] = [r for r in records if r.get("kind") == "finding"
                and r.get("problem") == "oom-kill" and r.get("subject") == service]
    assert any(f"Killed process {service_pid} " in e for e in placed["evidence"])
    assert not [r for r in records if r.get("kind") == "outcome" and r.get("executed")]
