"""Durable safety state: atomic files, corrupt files, a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.guards import GuardSettings, build_chain
from agent.state import SafetyState, StateError
from tests.unit._decide import T0, proposal


def test_round_trip_across_instances(tmp_path: Path) -> None:
    s = SafetyState(tmp_path, now=T0)
    s.record_execution("node-restart", "nas1", T0, problem="storage-hang", finding_subject="nfsd")
    s.record_fix("storage-hang", "nfsd", T0 + 5, "node-restart")
    s.approve("node-restart", "nas1", T0, 3600, by="bob", reason="ticket 42")
    s.set_maintenance(T0, 7200, "firmware", by="alice")
    s.save_ladders({"version": 1, "positions": []})
    again = SafetyState(tmp_path, now=T0 + 10)
    assert again.problems == [] and again.history_fault is None
    [e] = again.executions(action="node-restart")
    assert (e.subject, e.problem, e.finding_subject) == ("nas1", "storage-hang", "nfsd")
    assert [f.t for f in again.fixes("storage-hang", "nfsd")] == [T0 + 5]
    approval = again.approval("node-restart", "nas1", T0 + 10)
    assert approval is not None and approval.by == "bob"
    m = again.maintenance(T0 + 10)
    assert m is not None and m.reason == "firmware"
    assert again.maintenance(T0 + 7200) is None
    assert again.ladders() == {"version": 1, "positions": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "approvals.json", "history.json", "history.lock", "ladders.json",
        "maintenance.json"]  # no tmp left


def test_two_processes_appending_lose_nothing(tmp_path: Path) -> None:
    """The daemon and `remediate --execute` both append to the history: neither may write
    back a stale copy (a lost node-restart entry would reopen its budget)."""
    daemon = SafetyState(tmp_path, now=T0)
    operator = SafetyState(tmp_path, now=T0)  # loaded before the daemon's write
    daemon.record_execution("node-restart", "nas-a1", T0 + 1)
    operator.record_execution("restart-service", "nfs-server.service", T0 + 2)
    daemon.record_fix("storage-hang", "nfsd", T0 + 3, "node-restart")
    fresh = SafetyState(tmp_path, now=T0 + 4)
    assert [(e.action, e.t) for e in fresh.executions()] == [
        ("node-restart", T0 + 1), ("restart-service", T0 + 2)]
    assert [f.action for f in fresh.fixes("storage-hang", "nfsd")] == ["node-restart"]


def test_history_is_pruned_by_age(tmp_path: Path) -> None:
    s = SafetyState(tmp_path, now=T0, retain_s=100)
    s.record_execution("page", "a", T0)
    s.record_execution("page", "b", T0 + 150)
    assert [e.subject for e in SafetyState(tmp_path, now=T0 + 150).executions()] == ["b"]


@pytest.mark.parametrize("name", ["approvals.json", "maintenance.json", "ladders.json"])
@pytest.mark.parametrize("content", [b'{"approvals": [', b"\xff\xfe", b"[1, 2]", b""])
def test_corrupt_soft_state_is_reported_kept_aside_and_starts_clean(
    tmp_path: Path, name: str, content: bytes
) -> None:
    (tmp_path / name).write_bytes(content)
    s = SafetyState(tmp_path, now=T0)
    assert len(s.problems) == 1 and name in s.problems[0]
    assert s.history_fault is None
    assert (tmp_path / f"{name}.corrupt-{int(T0)}").read_bytes() == content
    assert s.approvals(T0) == [] and s.maintenance(T0) is None and s.ladders() == {}


@pytest.mark.parametrize("content", [
    b'{"version": 1, "executions": [{"action": "node-res',   # truncated by a crash
    b'{"version": 1, "executions": [{"action": 3}], "fixes": []}',  # bad entry
    b'{"version": 1}',                                          # missing lists
])
def test_corrupt_history_denies_disruptive_actions_until_cleared(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "history.json").write_bytes(content)
    for i in range(2):  # the fault survives an agent restart, though history.json is new
        s = SafetyState(tmp_path, now=T0)
        assert s.history_fault is not None and "history" in s.history_fault.reason
        chain = build_chain(GuardSettings(), mode="enforce", state=s)
        result = chain.evaluate(proposal("node-restart", "nas1", disruptive=True), T0)
        [v] = [v for v in result.verdicts if v.guard == "budget"]
        assert not v.allow and "clear-history" in v.reason
        assert result.page is not None
        assert chain.evaluate(proposal("page", f"x{i}"), T0).allowed  # a person is paged
        s.record_execution("page", f"x{i}", T0)  # new history is kept meanwhile
    assert any(p.name.startswith("history.json.corrupt-") for p in tmp_path.iterdir())
    s.clear_history_fault()
    s2 = SafetyState(tmp_path, now=T0)
    assert s2.history_fault is None and len(s2.executions(action="page")) == 2
    chain = build_chain(GuardSettings(), mode="enforce", state=s2)
    [v] = [v for v in chain.evaluate(proposal("node-restart", "nas1", disruptive=True),
                                     T0).verdicts if v.guard == "budget"]
    assert v.allow


def test_approval_for_any_subject_and_validation(tmp_path: Path) -> None:
    s = SafetyState(tmp_path, now=T0)
    s.approve("page", "*", T0, 60)
    assert s.approval("page", "anything", T0 + 1) is not None
    with pytest.raises(ValueError, match="positive"):
        s.approve("page", "x", T0, 0)
    with pytest.raises(ValueError, match="positive"):
        s.set_maintenance(T0, -1, "x")


def test_write_failure_raises_and_keeps_old_state(tmp_path: Path) -> None:
    s = SafetyState(tmp_path, now=T0)
    s.record_execution("page", "a", T0)
    before = (tmp_path / "history.json").read_bytes()
    blocker = tmp_path / ".history.json.tmp"
    blocker.mkdir()  # the tmp file cannot be created: a write that fails
    with pytest.raises(StateError, match=r"cannot write .*history\.json.*previous state is kept"):
        s.record_execution("page", "b", T0 + 1)
    assert [e.subject for e in s.executions()] == ["a"]  # memory agrees with disk
    assert (tmp_path / "history.json").read_bytes() == before


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted and removed afterwards even on failure."""
    mnt = Path(tempfile.mkdtemp(prefix="nw-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "nwfull", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


@pytest.mark.realparts
def test_full_disk_gives_a_clear_error_and_keeps_old_state(tiny_fs: Path) -> None:
    state_dir = tiny_fs / "state"
    s = SafetyState(state_dir, now=T0)
    s.approve("page", "a", T0, 3600)
    before = (state_dir / "approvals.json").read_bytes()
    fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    with pytest.raises(StateError, match="No space left on device"):
        s.approve("page", "b", T0, 3600, reason="x" * 8192)
    assert (state_dir / "approvals.json").read_bytes() == before
    assert [a.subject for a in s.approvals(T0)] == ["a"]
    assert not (state_dir / ".approvals.json.tmp").exists()
    assert json.loads(before)["approvals"][0]["subject"] == "a"
