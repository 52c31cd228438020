"""LogFileFollower on real temp files: rotation, truncation, partial lines, bad bytes, caps."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.sources.logfile import LogFileFollower, truncation_marker


def follow(path: Path, *, cap: int = 1024, from_start: bool = False,
           per_poll: int = 1 << 20, clock: FakeClock | None = None) -> LogFileFollower:
    return LogFileFollower("mail", path, cap, clock or FakeClock(), from_start=from_start,
                           max_bytes_per_poll=per_poll)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def texts(f: LogFileFollower) -> list[str]:
    return [ln.text for ln in f.poll()]


def test_starts_at_end_and_reads_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"old line before the agent started\n")
    clock = FakeClock(start=1000.0)
    f = follow(log, clock=clock)
    assert f.poll() == []
    append(log, b"one\ntwo\n")
    lines = f.poll()
    assert [ln.text for ln in lines] == ["one", "two"]
    assert {ln.source for ln in lines} == {"log:mail"}
    assert {ln.t for ln in lines} == {1000.0}
    assert not any(ln.truncated for ln in lines)
    assert all(ln.facility is None for ln in lines)


def test_from_start_reads_existing_content(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"a\r\nb\n\n\nc\n")
    assert texts(follow(log, from_start=True)) == ["a", "b", "c"]  # CR stripped, blanks skipped


def test_empty_file(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = follow(log, from_start=True)
    assert f.poll() == []
    assert f.stats().open and f.stats().error == ""


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = follow(log)
    append(log, b"first half ")
    assert f.poll() == []
    append(log, b"second half\nnext ")
    assert texts(f) == ["first half second half"]
    append(log, b"line\n")
    assert texts(f) == ["next line"]


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = follow(log)
    append(log, b"auth failed \xff\xfe for caf\xc3\xa9 \xc3\n")
    assert texts(f) == ["auth failed \ufffd\ufffd for café \ufffd"]


def test_utf8_character_split_across_reads(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = follow(log, per_poll=1)
    append(log, "é€\n".encode())
    out: list[str] = []
    for _ in range(10):
        out += texts(f)
    assert out == ["é€"]


def test_rotation_by_rename_finishes_old_file_first(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = follow(log)
    append(log, b"before rotation\n")
    assert texts(f) == ["before rotation"]
    append(log, b"written just before rename\nno newline at the end")
    log.rename(tmp_path / "mail.log.1")
    # renamed away, successor not there yet: keep reading the old file
    append(tmp_path / "mail.log.1", b" (still the old file)\n")
    assert texts(f) == ["written just before rename",
                        "no newline at the end (still the old file)"]
    log.write_bytes(b"in the new file\n")
    assert texts(f) == ["in the new file"]
    assert f.rotations == 1
    append(log, b"more\n")
    assert texts(f) == ["more"]


def test_rotation_last_line_without_newline_is_not_lost(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = follow(log)
    append(log, b"complete\ndangling")
    log.rename(tmp_path / "mail.log.1")
    log.write_bytes(b"new\n")
    assert texts(f) == ["complete", "dangling", "new"]


def test_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = follow(log)
    append(log, b"a long line before the copy and truncate\n")
    assert len(texts(f)) == 1
    (tmp_path / "mail.log.1").write_bytes(log.read_bytes())
    os.truncate(log, 0)
    append(log, b"after\n")  # shorter than what we had read: truncation is visible
    assert texts(f) == ["after"]
    assert f.truncations == 1 and f.rotations == 0


def test_file_appears_later(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    f = follow(log)
    assert f.poll() == []
    assert f.stats().error == "" and not f.stats().open
    log.write_bytes(b"first line of a new file\n")
    assert texts(f) == ["first line of a new file"]  # a new file is read from its start


def test_unreadable_path_is_an_error_not_a_crash(tmp_path: Path) -> None:
    f = follow(tmp_path)  # a directory
    assert f.poll() == []
    assert "cannot" in f.stats().error


@pytest.mark.parametrize(
    ("line", "cap", "head", "dropped", "tail"),
    [
        (b"x" * 10, 10, "x" * 10, 0, ""),
        (b"x" * 11, 10, "x" * 8, 1, "xx"),
        (b"abc" * 100, 7, "abcabc", 293, "c"),
        (b"H" * 100 + b"M" * 5000 + b"T" * 40, 160, "H" * 100 + "M" * 20, 4980, "T" * 40),
    ],
)
def test_over_long_line_keeps_head_and_tail_around_a_marker(
    tmp_path: Path, line: bytes, cap: int, head: str, dropped: int, tail: str
) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(line + b"\nnext\n")
    lines = follow(log, cap=cap, from_start=True).poll()
    assert lines[0].text == head + (truncation_marker(dropped) if dropped else "") + tail
    assert lines[0].truncated == (dropped > 0)
    assert lines[1].text == "next" and not lines[1].truncated


def test_ten_megabyte_line_with_bounded_memory(tmp_path: Path) -> None:
    size = 10 * 1024 * 1024
    log = tmp_path / "mail.log"
    with log.open("wb") as out:
        for _ in range(size // (1 << 20)):
            out.write(b"A" * (1 << 20))
        out.write(b"\nafter the monster\n")
    f = follow(log, cap=16384, from_start=True, per_poll=1 << 20)
    lines = []
    tracemalloc.start()
    try:
        for _ in range(20):  # the per-poll budget spreads the work over polls
            lines += f.poll()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [ln.truncated for ln in lines] == [True, False]
    assert lines[0].text == "A" * 12288 + truncation_marker(size - 16384) + "A" * 4096
    assert lines[1].text == "after the monster"
    assert peak < 2 * 1024 * 1024  # the line was never held whole


def test_poll_budget_bounds_work_per_call(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"0123456789\n" * 100)  # 1100 bytes
    f = follow(log, from_start=True, per_poll=330)
    counts = [len(f.poll()) for _ in range(5)]
    assert counts == [30, 30, 30, 10, 0]
