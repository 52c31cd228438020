"""`nodewarden sample` run as an operator runs it: a subprocess, a real config file, a
real TCP probe target on loopback and a stand-in mail-queue command."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REQUIRED = (
    "load1", "load5", "load15", "load1_per_cpu", "cpu_iowait_pct", "cpu_steal_pct",
    "procs_blocked", "procs_running", "tcp_listen_overflows_per_s",
    "tcp_syncookies_sent_per_s", "mem_available_pct", "swap_used_pct", "mailq_size",
    *(f"psi_{r}_{k}_avg{w}" for r in ("io", "cpu", "memory") for k in ("some", "full")
      for w in (10, 60)),
)


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on loopback that accepts and closes (enough for a `tcp` probe)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(2)
    srv.close()


def run_sample(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "sample", *args],
        check=False, capture_output=True, text=True, timeout=60,
    )


def write_config(tmp_path: Path, port: int) -> Path:
    mailq = tmp_path / "postqueue.py"
    mailq.write_text("import sys\nsys.stdout.write('{\"queue_id\": \"A1\"}\\n' * 3)\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        "[metrics]\n"
        f'filesystems = ["/", "{tmp_path}"]\n'
        f'mailq_command = ["{sys.executable}", "{mailq}", "-j"]\n'
        "[probes.local]\n"
        'kind = "tcp"\n'
        f"port = {port}\n"
        "[probes.closed]\n"
        'kind = "tcp"\n'
        "port = 1\n"
        "connect_timeout_s = 1\n"
    )
    return config


@pytest.mark.realparts
def test_sample_json_has_every_required_name(tmp_path: Path, listener: int) -> None:
    proc = run_sample("--json", "--config", str(write_config(tmp_path, listener)))
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert set(doc) >= {"t", "metrics", "unavailable", "blocked_tasks", "devices", "probes"}
    metrics = doc["metrics"]
    unavailable = set(doc["unavailable"])
    missing = [n for n in REQUIRED if n not in metrics and n not in unavailable]
    assert missing == []
    # rates need two reads: the command waits for them, so they are present, not absent
    assert "tcp_listen_overflows_per_s" in metrics
    assert "cpu_iowait_pct" in metrics
    assert 0.0 <= metrics["fs./.used_pct"] <= 100.0
    assert f"fs.{tmp_path}.used_pct" in metrics
    assert metrics["mailq_size"] == 3.0
    assert any(n.startswith("disk.") and n.endswith(".util_pct") for n in metrics)
    assert metrics["probe.local.ok"] == 1.0
    assert metrics["probe.local.latency_ms"] >= 0.0
    assert metrics["probe.closed.ok"] == 0.0
    assert [p["name"] for p in doc["probes"]] == ["local", "closed"]
    assert all(d["action"] == "present" for d in doc["devices"])
    assert doc["devices"], "the device inventory is empty"
    assert isinstance(doc["blocked_tasks"], list)


@pytest.mark.realparts
def test_sample_table_lists_sections(tmp_path: Path, listener: int) -> None:
    proc = run_sample("--config", str(write_config(tmp_path, listener)))
    assert proc.returncode == 0, proc.stderr
    for heading in ("metrics", "blocked tasks (D state)", "devices", "probes"):
        assert f"\n{heading}\n" in "\n" + proc.stdout
    assert "load1_per_cpu" in proc.stdout
    assert "closed" in proc.stdout and "FAIL" in proc.stdout


def test_sample_refuses_bad_config_with_file_key_reason(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[metrics]\nfs_timeout_s = "soon"\nmailq_comand = []\n')
    proc = run_sample("--config", str(config))
    assert proc.returncode == 2
    assert f"{config}: metrics.fs_timeout_s: must be a finite number" in proc.stderr
    assert f"{config}: metrics.mailq_comand: unknown key" in proc.stderr
    assert proc.stdout == ""
