"""KmsgFollower against the real /dev/kmsg: facility, resume, reboot, selectors.

Lines written from userspace arrive with facility 1, so they are safe to write: no
signature acts on them. The test writes only a handful of lines but switches
printk_devkmsg to "on" anyway (other suites may have used the 10 lines / 5 s budget),
and restores the previous value afterwards.
"""

from __future__ import annotations

import selectors
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.boot import BOOT_ID_PATH
from agent.clock import FakeClock
from agent.model import LogLine
from agent.sources.kmsg import KmsgFollower, load_position

pytestmark = pytest.mark.realparts

DEVKMSG_KNOB = Path("/proc/sys/kernel/printk_devkmsg")


@pytest.fixture
def kmsg_writable() -> Iterator[None]:
    old = DEVKMSG_KNOB.read_text().strip()
    DEVKMSG_KNOB.write_text("on\n")
    try:
        yield
    finally:
        DEVKMSG_KNOB.write_text(old + "\n")


def write_kmsg(text: str) -> None:
    with Path("/dev/kmsg").open("wb", buffering=0) as dev:
        dev.write(text.encode() + b"\n")


def drain(f: KmsgFollower) -> list[LogLine]:
    """Everything available now (the whole ring may take several calls)."""
    out: list[LogLine] = []
    while batch := f.read_available():
        out += batch
    return out


def with_token(lines: list[LogLine], token: str) -> list[LogLine]:
    return [ln for ln in lines if token in ln.text]


def test_follow_resume_and_reboot(tmp_path: Path, kmsg_writable: None) -> None:
    state = tmp_path / "kmsg.json"
    token = uuid.uuid4().hex
    clock = FakeClock(start=1234.0)

    # 1. no state: the whole ring, then the line we write, with facility 1
    with KmsgFollower(state, clock, save_interval_s=0.0) as first:
        assert not first.resumed
        drain(first)
        write_kmsg(f"nodewarden-test {token} one")
        got = with_token(drain(first), token)
        assert [ln.text for ln in got] == [f"nodewarden-test {token} one"]
        one = got[0]
        assert one.facility == 1 and not one.from_kernel
        assert one.source == "kmsg" and one.t == 1234.0
        assert one.seq is not None and one.monotonic_usec is not None
    saved = load_position(state)
    assert saved is not None
    assert saved.boot_id == BOOT_ID_PATH.read_text().strip()
    assert saved.seq >= one.seq

    # 2. same boot: resume after the saved seq; only the new line comes
    with KmsgFollower(state, clock, save_interval_s=0.0) as second:
        assert second.resumed
        write_kmsg(f"nodewarden-test {token} two")
        lines = drain(second)
        assert [ln.text for ln in with_token(lines, token)] == [f"nodewarden-test {token} two"]
        assert all(ln.seq is not None and ln.seq > saved.seq for ln in lines)
        assert second.lost == 0
    resumed = load_position(state)
    assert resumed is not None and resumed.seq > saved.seq

    # 3. another boot id: read the whole ring again, from records older than the saved seq
    other_boot = tmp_path / "boot_id"
    other_boot.write_text(str(uuid.uuid4()) + "\n")
    with KmsgFollower(state, clock, boot_id_path=other_boot, save_interval_s=0.0) as third:
        assert not third.resumed
        lines = drain(third)
        seqs = [ln.seq for ln in lines if ln.seq is not None]
        assert min(seqs) < resumed.seq
        assert [ln.text for ln in with_token(lines, token)] == [
            f"nodewarden-test {token} one", f"nodewarden-test {token} two"]
    after = load_position(state)
    assert after is not None and after.boot_id == other_boot.read_text().strip()


def test_fd_wakes_a_selectors_loop(tmp_path: Path, kmsg_writable: None) -> None:
    token = uuid.uuid4().hex
    with KmsgFollower(tmp_path / "kmsg.json", FakeClock()) as f, \
            selectors.DefaultSelector() as sel:
        drain(f)
        sel.register(f.fileno(), selectors.EVENT_READ)
        write_kmsg(f"nodewarden-test {token} wake")
        ready = sel.select(timeout=10.0)  # returns at once: the record is already there
        assert [key.fd for key, _ in ready] == [f.fileno()]
        assert [ln.facility for ln in with_token(drain(f), token)] == [1]
