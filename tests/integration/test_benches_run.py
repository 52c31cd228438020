"""The benches that run the agent still run and print every budget line (issue 8).

Figures are printed, never asserted (docs/architecture.md, convention 12): these runs
are short and only check that each script works end to end on this machine and says
what it measures. A bench that silently measured nothing (0 lines reaching the audit
log, an import error) is what they catch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.unit._signatures import REPO


def _run(*argv: str) -> str:
    out = subprocess.run([sys.executable, *argv], cwd="/", capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.realparts
def test_idle_bench_sets_the_agent_beside_monit() -> None:
    out = _run(str(REPO / "bench/idle.py"), "--seconds", "3")
    assert "budget <= 0.3" in out
    assert "budget <= 25 MiB" in out
    assert "monit itself" in out


@pytest.mark.realparts
def test_latency_bench_sees_every_line_it_wrote() -> None:
    out = _run(str(REPO / "bench/latency.py"), "--lines", "5", "--rate", "20", "--idle", "2")
    assert "5/5 lines" in out
    assert "budget: p99 < 100 ms" in out
    assert "budget <= 25 MiB" in out


@pytest.mark.realparts
def test_sample_bench_compares_the_readers_with_psutil() -> None:
    out = _run(str(REPO / "bench/sample.py"), "--samples", "5", "--paced", "1",
               "--rounds", "1")
    assert "budget 25 MiB" in out
    assert "/proc (ours)     psutil" in out


@pytest.mark.realparts
def test_coordinator_bench_drives_agents_through_sshd() -> None:
    out = _run(str(REPO / "bench/coordinator.py"), "--agents", "3", "--seconds", "2",
               "--heartbeat", "1", "--findings", "2", "--burst", "2", "--no-agent")
    assert "3/3 agents connected" in out and "handed to serve" in out
    assert "burst: 6 findings at once" in out and "(0 missing)" in out
    assert "3 requests at once, 2 granted" in out
    assert "budget: 2 GiB" in out and "budget: p99 <= 1000 ms" in out
