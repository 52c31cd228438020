"""The audit log: JSON lines, fsync'd batches, size rotation, and a full disk.

A full disk is real: the log path is a symlink to /dev/full, whose writes fail with
ENOSPC, and is later replaced by a regular file (the log reopens after an error).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from agent.report.audit import AuditLog


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ev(i: int, kind: str = "finding") -> dict[str, object]:
    return {"t": float(i), "kind": kind, "problem": "hung-task", "subject": f"task{i}"}


def test_appended_records_are_written_as_json_lines_on_flush(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.append(ev(1))
    audit.append(ev(2, "verdict"))
    assert not path.exists() or path.read_text() == ""  # buffered until the turn ends
    assert audit.flush()
    assert records(path) == [ev(1), ev(2, "verdict")]
    assert audit.stats().written == 2
    assert audit.stats().buffered == 0
    assert (path.stat().st_mode & 0o777) == 0o600
    audit.close()


def test_reopening_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for i in range(2):
        audit = AuditLog(path)
        audit.append(ev(i))
        audit.close()
    assert [r["t"] for r in records(path)] == [0.0, 1.0]


def test_rotation_by_size_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    line_len = len(json.dumps(ev(10), separators=(",", ":"))) + 1
    audit = AuditLog(path, max_bytes=line_len * 3, keep=2)
    for i in range(10, 22):  # 12 records, 3 per file
        audit.append(ev(i))
        audit.flush()
    audit.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"
    ]
    assert [r["t"] for r in records(path)] == [19.0, 20.0, 21.0]
    assert [r["t"] for r in records(tmp_path / "audit.jsonl.1")] == [16.0, 17.0, 18.0]
    assert [r["t"] for r in records(tmp_path / "audit.jsonl.2")] == [13.0, 14.0, 15.0]
    assert audit.stats().rotations == 3


def test_full_disk_keeps_records_in_memory_and_writes_them_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")
    audit = AuditLog(path, buffer_records=100)
    with caplog.at_level(logging.ERROR):
        for i in range(3):
            audit.append(ev(i, "outcome"))
            assert not audit.flush()  # ENOSPC: no exception into the loop
    stats = audit.stats()
    assert stats.write_errors == 3
    assert stats.buffered == 3
    assert stats.dropped == 0
    assert "No space left on device" in stats.last_error
    errors = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(errors) == 1  # logged once per failing stretch, not once per turn
    path.unlink()  # the disk has room again
    assert audit.flush()
    assert [r["t"] for r in records(path)] == [0.0, 1.0, 2.0]
    audit.close()


def test_full_buffer_drops_oldest_and_says_so_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")
    audit = AuditLog(path, buffer_records=4)
    for i in range(6):
        audit.append(ev(i, "verdict" if i % 2 else "finding"))
        audit.flush()
    assert audit.stats().dropped == 2
    path.unlink()
    with caplog.at_level(logging.ERROR):
        assert audit.flush()
    got = records(path)
    note = got[0]
    assert note["kind"] == "note"
    assert note["dropped"] == {"finding": 1, "verdict": 1}
    assert "dropped 2 record(s)" in str(note["text"])
    assert "No space left on device" in str(note["text"])
    assert [r["t"] for r in got[1:]] == [2.0, 3.0, 4.0, 5.0]
    assert any("dropped 2 record(s)" in r.getMessage() for r in caplog.records)
    audit.close()


def test_close_with_a_full_disk_says_what_was_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")
    audit = AuditLog(path)
    audit.append(ev(1, "finding"))
    audit.append(ev(2, "outcome"))
    with caplog.at_level(logging.ERROR):
        audit.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("2 record(s) not written at exit (finding 1, outcome 1)" in m for m in msgs)


def test_a_short_write_is_completed_not_duplicated(tmp_path: Path) -> None:
    """A record cut short by a failing write is finished later, never split or repeated."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.append(ev(1))
    audit.append(ev(2))
    # simulate the kernel accepting only part of the batch: consume 10 bytes
    first = json.dumps(ev(1), separators=(",", ":")).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, first[:10])
    os.close(fd)
    audit._consume(10)  # what _write_some does after a short os.write
    assert audit.flush()
    assert records(path) == [ev(1), ev(2)]
    audit.close()


@pytest.mark.parametrize(
    ("max_bytes", "keep", "buffer_records"), [(0, 3, 10), (10, -1, 10), (10, 3, 0)]
)
def test_bad_limits_are_refused(
    tmp_path: Path, max_bytes: int, keep: int, buffer_records: int
) -> None:
    with pytest.raises(ValueError, match="must be"):
        AuditLog(tmp_path / "a", max_bytes=max_bytes, keep=keep, buffer_records=buffer_records)


def test_a_burst_larger_than_the_buffer_is_written_not_dropped(tmp_path: Path) -> None:
    """A whole kernel ring read at start-up must not push out the records before it (the
    outcome of a node restart's intent is emitted first)."""
    audit = AuditLog(tmp_path / "audit.jsonl", buffer_records=3)
    audit.append({"kind": "outcome", "intent": "first"})
    for i in range(10):
        audit.append({"kind": "finding", "n": i})
    assert audit.flush()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert lines[0] == {"kind": "outcome", "intent": "first"}
    assert [r["n"] for r in lines[1:]] == list(range(10))
    assert audit.dropped_total == 0
