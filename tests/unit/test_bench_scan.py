"""bench/scan.py and bench/scan_cli.py run end to end on a small corpus: both engines find
the same lines, and every figure the budgets need is printed (the figures themselves are
never asserted)."""

from __future__ import annotations

import subprocess
import sys

from tests.unit._signatures import REPO


def test_bench_scan_prints_every_figure() -> None:
    out = subprocess.run(
        [sys.executable, "bench/scan.py", "--lines", "3000", "--runs", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "MISMATCH" not in out.stderr
    for row in ("floor", "naive", "hyperscan", "portable", "per-line"):
        assert f"  {row} " in out.stdout
    assert "hyperscan/floor = " in out.stdout and "hyperscan/naive = " in out.stdout
    # the corpus's trouble lines are found: the matched count is the same on every row
    counts = {line.split()[0]: line.split()[-3] for line in out.stdout.splitlines()
              if "matched lines" in line}
    assert len(set(counts.values())) == 1 and counts["hyperscan"] != "0", counts


def test_bench_scan_cli_prints_every_figure() -> None:
    out = subprocess.run(
        [sys.executable, "bench/scan_cli.py", "--lines", "2000", "--pairs", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    for row in ("start-up, warm cache", "start-up, cold cache", "end to end, json",
                "end to end, text", "end to end, json, unique"):
        assert f"  {row} " in out.stdout, out.stdout
    assert out.stdout.count("x a decoding per-line read") == 3
    assert "budget <= 15x" in out.stdout and "budget <= 3x" in out.stdout
