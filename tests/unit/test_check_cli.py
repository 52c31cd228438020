"""`nodewarden check` and `run` refuse a bad configuration or signature, saying where."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BAD_SIGNATURE = """
[[signature]]
id = "local.bad-regex"
problem = "hung-task"
regex = "INFO: task (?P<task>[a-z+ blocked"
source = "kmsg"
severity = "error"
description = "a broken user signature"
reference = "kernel/hung_task.c"
subject = "task"
examples = [{line = "INFO: task nfsd:1 blocked", subject = "nfsd"}]
counter_examples = ["nothing"]
"""


def nodewarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)


def config(tmp_path: Path, body: str = "") -> Path:
    sigs = tmp_path / "signatures.d"
    sigs.mkdir(exist_ok=True)
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nsignatures_dir = "{sigs}"\nstate_dir = "{tmp_path}/state"\n'
                    + body)
    return path


def test_shipped_configuration_and_catalog_are_clean(tmp_path: Path) -> None:
    r = nodewarden("check", "--config", str(config(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "configuration ok"


def test_bad_user_signature_is_reported_with_file_id_and_reason(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "signatures.d" / "local.toml").write_text(BAD_SIGNATURE)
    r = nodewarden("check", "--json", "--config", str(path))
    assert r.returncode == 1
    errors = [json.loads(line) for line in r.stdout.splitlines()]
    regex = [e for e in errors if e["key"] == "signature[local.bad-regex].regex"]
    assert regex and regex[0]["file"].endswith("signatures.d/local.toml")
    assert "bad regex" in regex[0]["reason"]


def test_unparseable_signature_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "signatures.d" / "junk.toml").write_bytes(b"\xff\xfe[[signature\n")
    r = nodewarden("check", "--config", str(path))
    assert r.returncode == 1
    assert "junk.toml" in r.stdout
    assert "Traceback" not in r.stderr


def test_misspelt_key_is_reported(tmp_path: Path) -> None:
    r = nodewarden("check", "--config", str(config(tmp_path, '[kmsg]\nenabeld = true\n')))
    assert r.returncode == 1
    assert f"{tmp_path}/agent.toml: kmsg.enabeld: unknown key" in r.stdout


def test_run_refuses_to_start_with_a_bad_signature(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "signatures.d" / "local.toml").write_text(BAD_SIGNATURE)
    r = nodewarden("run", "--config", str(path))
    assert r.returncode == 2
    assert "signature[local.bad-regex].regex" in r.stderr
    assert "refusing to start" in r.stderr
    assert not (tmp_path / "state" / "audit.jsonl").exists()
