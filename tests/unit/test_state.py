"""Durable safety state: atomic files, corrupt files, a full disk."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.guards import GuardSettings, build_chain
from agent.state import SafetyState, StateError
from tests.unit._decide import T0, proposal
from tests.unit._tmpfs import small_tmpfs


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
        "approvals.json", "history.jsonl", "history.lock", "ladders.json",
        "maintenance.json"]  # no tmp left
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["execution", "fix"]


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
    assert [e.subject for e in SafetyState(tmp_path, now=T0 + 150, retain_s=100).executions()
            ] == ["b"]
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1  # compacted


def test_an_append_from_another_process_is_read_incrementally(tmp_path: Path) -> None:
    daemon = SafetyState(tmp_path, now=T0)
    assert daemon.refresh(T0) == []  # the first refresh only records what is there
    daemon.record_execution("restart-service", "dovecot", T0, target="dovecot.service")
    assert daemon.refresh(T0) == []  # its own append is not news
    operator = SafetyState(tmp_path, now=T0 + 1)
    operator.record_execution("restart-service", "dovecot.service", T0 + 1, origin="operator")
    assert daemon.refresh(T0 + 2) == ["history.jsonl"]
    assert [e.target for e in daemon.executions(action="restart-service")] == [
        "dovecot.service", "dovecot.service"]  # one unit, however it was spelt


def test_the_earlier_history_format_is_converted(tmp_path: Path) -> None:
    (tmp_path / "history.json").write_text(json.dumps({"version": 1, "executions": [
        {"action": "node-restart", "subject": "nas1", "t": T0, "problem": "storage-hang"}],
        "fixes": [{"problem": "storage-hang", "subject": "nfsd", "t": T0 + 5}]}))
    s = SafetyState(tmp_path, now=T0 + 10)
    assert s.history_fault is None and s.problems == []
    assert [(e.action, e.target) for e in s.executions()] == [("node-restart", "nas1")]
    assert len(s.fixes("storage-hang", "nfsd")) == 1
    assert not (tmp_path / "history.json").exists()
    assert SafetyState(tmp_path, now=T0 + 11).executions()  # the journal has them now


@pytest.mark.parametrize("name", ["approvals.json", "ladders.json"])
@pytest.mark.parametrize("content", [b'{"approvals": [', b"\xff\xfe", b"[1, 2]", b""])
def test_corrupt_soft_state_is_reported_kept_aside_and_starts_clean(
    tmp_path: Path, name: str, content: bytes
) -> None:
    (tmp_path / name).write_bytes(content)
    s = SafetyState(tmp_path, now=T0)
    assert len(s.problems) == 1 and name in s.problems[0]
    assert s.history_fault is None
    assert (tmp_path / f"{name}.corrupt-{int(T0)}").read_bytes() == content
    assert s.approvals(T0) == [] and s.ladders() == {}


@pytest.mark.parametrize("content", [
    b'{"since": 1790000000.0, "until": 17', b"\xff\xfe", b"[1, 2]", b"",
    b'{"since": 1790000000.0, "until": NaN, "reason": "x"}',  # a NaN flag never ends
    b'{"since": "yesterday", "until": 1790009999.0, "reason": "x"}',
])
def test_a_corrupt_maintenance_file_fails_closed_until_an_operator_sets_it(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "maintenance.json").write_bytes(content)
    for _ in range(2):  # the file is left in place: the fault survives an agent restart
        s = SafetyState(tmp_path, now=T0)
        assert s.maintenance_fault is not None and any("maintenance" in p for p in s.problems)
        chain = build_chain(GuardSettings(), mode="enforce", state=s)
        result = chain.evaluate(proposal("restart-service", "dovecot.service"), T0)
        [v] = [v for v in result.verdicts if v.guard == "maintenance"]
        assert not v.allow and "counts as on" in v.reason
        assert result.page is not None and "maintenance" in result.page
        assert chain.evaluate(proposal("page", "x"), T0).allowed  # a person is paged
    assert (tmp_path / "maintenance.json").read_bytes() == content
    s.clear_maintenance()  # `nodewarden maintenance off`
    s2 = SafetyState(tmp_path, now=T0)
    assert s2.maintenance_fault is None
    assert build_chain(GuardSettings(), mode="enforce", state=s2).evaluate(
        proposal("restart-service", "dovecot.service"), T0).allowed


GOOD_LINE = json.dumps({"kind": "execution", "action": "node-restart", "subject": "nas1",
                        "t": T0 - 10, "problem": "storage-hang"})


@pytest.mark.parametrize("bad", [
    b'{"kind": "execution", "action": "node-res',            # torn by a crash
    b'{"kind": "execution", "action": 3, "subject": "x", "t": 1}',  # bad entry
    b'{"kind": "execution", "action": "x", "subject": "x", "t": NaN}',
    b'{"kind": "mystery", "t": 1}',
    b"\xff\xfe garbage",
    b"[" * 100000,                                            # a nesting bomb
])
def test_a_corrupt_history_keeps_its_valid_entries_and_fails_closed_until_cleared(
    tmp_path: Path, bad: bytes
) -> None:
    (tmp_path / "history.jsonl").write_bytes(
        GOOD_LINE.encode() + b"\n" + bad + b"\n" + GOOD_LINE.encode() + b"\n")
    for i in range(2):  # the fault survives an agent restart
        s = SafetyState(tmp_path, now=T0)
        assert s.history_fault is not None and "history" in s.history_fault.reason
        assert len(s.executions(action="node-restart")) == 2  # the valid entries count
        chain = build_chain(GuardSettings(), mode="enforce", state=s)
        for p in (proposal("node-restart", "nas1", disruptive=True),
                  proposal("restart-service", "dovecot.service")):  # budgeted, too
            result = chain.evaluate(p, T0)
            [v] = [v for v in result.verdicts if v.guard == "budget"]
            assert not v.allow and "clear-history" in v.reason
            assert result.page is not None
        assert chain.evaluate(proposal("page", f"x{i}"), T0).allowed  # a person is paged
        s.record_execution("page", f"x{i}", T0)  # new history is kept meanwhile
    assert any(p.name.startswith("history.jsonl.corrupt-") for p in tmp_path.iterdir())
    s.clear_history_fault()
    s2 = SafetyState(tmp_path, now=T0)
    assert s2.history_fault is None and len(s2.executions(action="page")) == 2
    assert len(s2.executions(action="node-restart")) == 2
    chain = build_chain(GuardSettings(), mode="enforce", state=s2)
    [v] = [v for v in chain.evaluate(proposal("restart-service", "dovecot.service"),
                                     T0).verdicts if v.guard == "budget"]
    assert v.allow


def test_a_corrupt_legacy_history_faults_too(tmp_path: Path) -> None:
    (tmp_path / "history.json").write_bytes(b'{"version": 1, "executions": [{"action": "no')
    s = SafetyState(tmp_path, now=T0)
    assert s.history_fault is not None
    assert any(p.name.startswith("history.json.corrupt-") for p in tmp_path.iterdir())


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
    before = (tmp_path / ".approvals.json.tmp")
    before.mkdir()  # the tmp file cannot be created: a write that fails
    with pytest.raises(StateError, match=r"cannot write .*approvals\.json.*previous state"):
        s.approve("page", "b", T0, 60)
    assert s.approvals(T0) == []  # memory agrees with disk
    (tmp_path / "history.jsonl").unlink()
    (tmp_path / "history.jsonl").mkdir()  # the journal cannot be opened for writing
    with pytest.raises(StateError, match=r"cannot write .*history\.jsonl"):
        s.record_execution("page", "b", T0 + 1)
    assert [e.subject for e in s.executions()] == ["a"]


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    with small_tmpfs("64k") as mnt:
        yield mnt


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
