"""`dmesg | nodewarden scan --json -` on this healthy machine prints nothing (issue 3).

Other tests write trouble-shaped lines into /dev/kmsg from userspace (facility 1), and
plain `dmesg` does not show the facility. So: the kernel's own lines (`dmesg -f kern`)
must scan clean in every dmesg format, and any hit in plain `dmesg` must be a line that
userspace wrote (facility >= 1 in `dmesg -x`), never one the kernel printed. The one
exception is trouble our own tests provoke on purpose inside network namespaces they make
(test_synrecv_real.py floods a listener there, and the kernel really prints "Possible SYN
flooding on port 10.231.X.1:PORT"): such a test records the exact text first
(tests/integration/_provoked.py, in /run: as long-lived as the ring). (`dmesg -r`
is no help here: on this machine its `<N>` carries the level only, e.g. `<3>` for a
line /dev/kmsg records as `11,...`.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.sources.lineformat import parse_line
from tests.integration._provoked import provoked

REPO = Path(__file__).resolve().parents[2]


def _dmesg(*args: str) -> bytes:
    out = subprocess.run(["dmesg", *args], capture_output=True, check=True, timeout=30).stdout
    assert out.count(b"\n") > 10, "dmesg printed (almost) nothing: cannot test"
    return out


def _scan(data: bytes) -> tuple[list[dict[str, object]], bytes]:
    scan = subprocess.run(
        [sys.executable, "-m", "agent", "scan", "--json", "-"],
        input=data, capture_output=True, cwd=REPO, timeout=60, check=False,
    )
    assert scan.returncode == 0, scan.stderr
    return [json.loads(x) for x in scan.stdout.decode().splitlines()], scan.stderr


@pytest.mark.realparts
@pytest.mark.parametrize("fmt", [(), ("-T",), ("-x",), ("-r",)])
def test_kernel_lines_scan_clean(fmt: tuple[str, ...]) -> None:
    hits, _stderr = _scan(_dmesg("--facility=kern", *fmt))
    assert [h for h in hits if not provoked_by_tests(h)] == []


@pytest.mark.realparts
def test_plain_dmesg_hits_are_only_userspace_lines() -> None:
    hits, _stderr = _scan(_dmesg())
    user_texts = set()
    for raw in _dmesg("-x").decode("utf-8", "replace").splitlines():
        line = parse_line(raw)
        if line.facility is not None and line.facility >= 1:
            user_texts.add(line.text)
    for hit in hits:
        assert hit["text"] in user_texts or provoked_by_tests(hit), (
            f"the kernel printed a trouble line: {hit}")


def provoked_by_tests(hit: dict[str, object], recorded: set[str] | None = None) -> bool:
    """A kernel line a test of ours recorded before provoking it on purpose."""
    return str(hit["text"]) in (provoked() if recorded is None else recorded)


def test_only_recorded_lines_are_excused() -> None:
    flood = "TCP: request_sock_TCP: Possible SYN flooding on port 10.231.7.1:8025. Sending cookies."
    assert provoked_by_tests({"text": flood}, {flood})
    assert not provoked_by_tests({"text": flood.replace("10.231.7.1", "0.0.0.0")}, {flood})
