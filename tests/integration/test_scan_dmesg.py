"""`dmesg | nodewarden scan --json -` on this healthy machine prints nothing (issue 3).

Other tests write trouble-shaped lines into /dev/kmsg from userspace (facility 1), and
plain `dmesg` does not show the facility. So: the kernel's own lines (`dmesg -f kern`)
must scan clean in every dmesg format, and any hit in plain `dmesg` must be a line that
userspace wrote (facility >= 1 in `dmesg -x`), never one the kernel printed. (`dmesg -r`
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
    hits, stderr = _scan(_dmesg("--facility=kern", *fmt))
    assert hits == []
    assert b" 0 matched" in stderr


@pytest.mark.realparts
def test_plain_dmesg_hits_are_only_userspace_lines() -> None:
    hits, _stderr = _scan(_dmesg())
    user_texts = set()
    for raw in _dmesg("-x").decode("utf-8", "replace").splitlines():
        line = parse_line(raw)
        if line.facility is not None and line.facility >= 1:
            user_texts.add(line.text)
    for hit in hits:
        assert hit["text"] in user_texts, f"the kernel printed a trouble line: {hit}"
