"""`nodewarden scan` end to end, as a subprocess (`python -m agent scan`)."""
# ruff: noqa: E501  (real log lines are long; they are data)

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit._signatures import GOOD, REPO

ENGINES = ["hyperscan", "portable"]

MIXED = [
    ("[  123.456789] INFO: task nfsd:1234 blocked for more than 120 seconds.", "hung-task", "nfsd", None),
    ("[Wed Oct 20 03:18:44 2021] nfs: server nas-a1 not responding, still trying", "nfs-not-responding", "nas-a1", None),
    ("Oct 20 03:18:44 nas-a1 kernel: XFS (sdb1): Filesystem has been shut down due to log error (0x2).", "fs-shutdown", "sdb1", 0),
    ("Oct 20 03:18:44 nas-a1 kernel: [ 77.000001] md/raid1:md0: Disk failure on sdb1, disabling device.", "raid-degraded", "md0", 0),
    ("3,812,123456789,-;blk_update_request: I/O error, dev sdb, sector 123 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 0", "block-io-error", "sdb", 0),
    ("12,813,123456790,-;EXT4-fs (dm-0): Remounting filesystem read-only", "fs-readonly", "dm-0", 1),
    ("<4>[  200.000000] NETDEV WATCHDOG: eth0 (e1000e): transmit queue 0 timed out 5120 ms", "nic-tx-timeout", "eth0", None),
    ("2021-10-20T03:18:44,123456+00:00 possible SYN flooding on port 25. Sending cookies.", "syn-flood", "25", None),
    ("Oct 20 03:18:44 mx1 logger: Out of memory: Killed process 1234 (dovecot) total-vm:1kB, anon-rss:1kB", "oom-kill", "dovecot", 1),
    ("watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [nfsd:1234]", "soft-lockup", "3", None),
    ("Oct 20 03:18:44 mx1 postfix/smtpd[123]: warning: unknown[203.0.113.9]: SASL LOGIN authentication failed: UGFzc3dvcmQ6", "auth-failure", "203.0.113.9", 1),
    ("Oct 20 03:18:44 mx1 dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<x>, method=PLAIN, rip=203.0.113.5, lip=192.0.2.1, session=<a>", "auth-failure", "203.0.113.5", 1),
]
BENIGN = [
    "[    0.000000] Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org)",
    "[    0.266388] PCI: Using host bridge windows from ACPI; if necessary, use \"pci=nocrs\" and report a bug",
    "Oct 20 03:18:44 host kernel: mce: CPU0: Thermal monitoring enabled (TM1)",
]


def run_scan(*args: str, stdin: bytes | None = None,
             env_engine: str | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "agent", "scan", *args]
    if env_engine:
        cmd += ["--engine", env_engine]
    return subprocess.run(cmd, input=stdin, capture_output=True, cwd=REPO, timeout=120,
                          check=False)


def json_lines(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.fixture
def nodir(tmp_path: Path) -> str:
    """An empty user signatures dir, so the machine's /etc does not leak into tests."""
    d = tmp_path / "sigs"
    d.mkdir()
    return str(d)


@pytest.mark.parametrize("engine", ENGINES)
def test_mixed_formats(tmp_path: Path, nodir: str, engine: str) -> None:
    lines = []
    for i, (line, *_rest) in enumerate(MIXED):
        lines += [BENIGN[i % len(BENIGN)], line]
    path = tmp_path / "mixed.log"
    path.write_text("\n".join(lines) + "\n")
    r = run_scan(str(path), "--json", "--signatures-dir", nodir, env_engine=engine)
    assert r.returncode == 0, r.stderr
    got = json_lines(r.stdout)
    assert [(g["line_no"], g["problem"], g["subject"], g["facility"]) for g in got] == [
        (2 * i + 2, problem, subject, facility)
        for i, (_line, problem, subject, facility) in enumerate(MIXED)
    ]
    for g in got:
        assert set(g) >= {"line_no", "signature", "problem", "subject", "severity", "facility",
                          "recovery", "text"}
        assert g["recovery"] is False
    assert b"24 lines read, 12 matched" in r.stderr


def test_text_output_and_recovery(nodir: str) -> None:
    data = (b"nfs: server nas-a1 not responding, still trying\n"
            b"nfs: server nas-a1 OK\n")
    r = run_scan("-", "--signatures-dir", nodir, stdin=data)
    assert r.returncode == 0
    assert r.stdout.decode().splitlines() == [
        "1 nfs-not-responding nas-a1 [nfs-not-responding.client] "
        "nfs: server nas-a1 not responding, still trying",
        "2 nfs-not-responding nas-a1 [nfs-not-responding.ok] RECOVERY nfs: server nas-a1 OK",
    ]
    assert b"(1 findings, 1 recoveries)" in r.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_binary_garbage(nodir: str, engine: str) -> None:
    rng = random.Random(7)
    garbage = rng.randbytes(300_000)
    data = garbage + b"\n[  1.0] Oops: 0000 [#1] SMP\n" + rng.randbytes(50_000)
    r = run_scan("-", "--json", "--signatures-dir", nodir, stdin=data, env_engine=engine)
    assert r.returncode == 0, r.stderr
    problems = [g["problem"] for g in json_lines(r.stdout)]
    assert "kernel-oops" in problems
    err = r.stderr.decode()
    assert "with invalid UTF-8 (replaced)" in err
    assert " 0 with invalid UTF-8" not in err and " 0 with NUL bytes" not in err


@pytest.mark.parametrize("engine", ENGINES)
def test_ten_megabyte_line(nodir: str, engine: str) -> None:
    big = b"x" * (10 * 1024 * 1024)
    data = (b"nfs: server a1 not responding, still trying " + big + b"\n"
            + big + b" nfs: server hidden not responding, still trying\n"
            + b"nfs: server a2 not responding, timed out\n")
    r = run_scan("-", "--json", "--signatures-dir", nodir, stdin=data, env_engine=engine)
    assert r.returncode == 0, r.stderr
    got = json_lines(r.stdout)
    assert [(g["line_no"], g["subject"], g["truncated"]) for g in got] == [
        (1, "a1", True), (3, "a2", False)]
    assert len(got[0]["text"]) <= 64 * 1024
    assert b"3 lines read" in r.stderr and b"2 truncated at 65536 bytes" in r.stderr


def test_invalid_utf8(nodir: str) -> None:
    data = b"nfs: server caf\xc3\xa9 not responding, still trying \xff\xfe\xc3(\n\xe9t\xe9\n"
    r = run_scan("-", "--json", "--signatures-dir", nodir, stdin=data)
    assert r.returncode == 0
    (g,) = json_lines(r.stdout)
    assert g["subject"] == "caf\u00e9"
    assert g["text"].endswith("\ufffd\ufffd\ufffd(")
    assert b"2 with invalid UTF-8 (replaced)" in r.stderr


def test_empty_file(tmp_path: Path, nodir: str) -> None:
    path = tmp_path / "empty.log"
    path.write_bytes(b"")
    r = run_scan(str(path), "--signatures-dir", nodir)
    assert r.returncode == 0
    assert r.stdout == b""
    assert b"empty input" in r.stderr


def test_no_final_newline_and_crlf(nodir: str) -> None:
    r = run_scan("-", "--json", "--signatures-dir", nodir,
                 stdin=b"benign\r\nOops: 0000 [#1] SMP\r\nnfs: server z OK")
    assert [(g["line_no"], g["signature"]) for g in json_lines(r.stdout)] == [
        (2, "kernel-oops.oops"), (3, "nfs-not-responding.ok")]


def test_missing_file_exit_2(tmp_path: Path, nodir: str) -> None:
    r = run_scan(str(tmp_path / "absent.log"), "--signatures-dir", nodir)
    assert r.returncode == 2
    assert b"no such file" in r.stderr


def test_read_error_exit_3(tmp_path: Path, nodir: str) -> None:
    r = run_scan(str(tmp_path), "--signatures-dir", nodir)
    assert r.returncode == 3
    assert b"read error" in r.stderr


def test_bad_user_signature_refused(tmp_path: Path) -> None:
    d = tmp_path / "sigs"
    d.mkdir()
    (d / "broken.toml").write_text('[[signature]]\nid = "site.x"\nregex = "("\n')
    r = run_scan("-", "--signatures-dir", str(d), stdin=b"Oops: 0000 [#1] SMP\n")
    assert r.returncode == 2
    err = r.stderr.decode()
    assert f"{d / 'broken.toml'}: signature[site.x].regex: bad regex" in err
    assert "refusing to scan" in err
    assert r.stdout == b""


def test_user_signature_is_used(tmp_path: Path) -> None:
    d = tmp_path / "sigs"
    d.mkdir()
    (d / "site.toml").write_text(GOOD)
    r = run_scan("-", "--json", "--signatures-dir", str(d),
                 stdin=b"[ 1.0] nasd: export /srv/mail vanished\n")
    assert r.returncode == 0, r.stderr
    (g,) = json_lines(r.stdout)
    assert (g["signature"], g["subject"]) == ("site.nas-gone", "/srv/mail")


def test_terminal_escapes_in_others_text_are_shown_not_obeyed() -> None:
    """A process name with `\\x1b[1A\\x1b[2K` (erase the line above) in a kernel record."""
    from agent.pipeline.api import Event
    from agent.report.text import printable
    from agent.simulate.render import render

    evil = "nfsd\x1b[1A\x1b[2K\rok"
    assert printable(evil) == "nfsd\\x1b[1A\\x1b[2K\\x0dok"
    line = render(Event(0.0, "finding", {"problem": "hung-task", "subject": evil,
                                          "severity": "error", "trusted": True,
                                          "evidence": [f"INFO: task {evil}:1 blocked"]}))
    assert "\x1b" not in line and "\r" not in line and "\\x1b[2K" in line
