"""/dev/kmsg record parsing, and the follower's position, EPIPE and gap logic.

The follower reads through a scripted device (the KmsgDevice protocol it is built on);
tests/integration/test_kmsg_real.py runs the same follower against the real /dev/kmsg.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.sources.kmsg import (
    KmsgDevice,
    KmsgFollower,
    KmsgParseError,
    KmsgPosition,
    load_position,
    parse_record,
    save_position,
)
from agent.sources.lineformat import unescape


# --------------------------------------------------------------------------- parse_record
@dataclass(frozen=True)
class Case:
    raw: bytes
    text: str
    facility: int
    priority: int
    seq: int
    usec: int
    fields: dict[str, str]


CASES = [
    Case(b"6,339,5140900,-;NET: Registered protocol family 10\n",
         "NET: Registered protocol family 10", 0, 6, 339, 5140900, {}),
    # facility 1: written from userspace ("<14>" or no prefix)
    Case(b"14,340,5140901,-;spoofed INFO: task x blocked\n",
         "spoofed INFO: task x blocked", 1, 6, 340, 5140901, {}),
    # kernel 5.10+ appends caller=; more comma fields must not confuse the parser
    Case(b"3,341,6000000,-,caller=T123;sd 0:0:0:0: [sda] tag#0 FAILED\n",
         "sd 0:0:0:0: [sda] tag#0 FAILED", 0, 3, 341, 6000000, {}),
    Case(b"7,160,424069,-;pci_root PNP0A03:00: host bridge window [io 0x0000-0x0cf7]\n"
         b" SUBSYSTEM=acpi\n DEVICE=+acpi:PNP0A03:00\n",
         "pci_root PNP0A03:00: host bridge window [io 0x0000-0x0cf7]", 0, 7, 160, 424069,
         {"SUBSYSTEM": "acpi", "DEVICE": "+acpi:PNP0A03:00"}),
    # escapes: newline, backslash, UTF-8 bytes escaped one by one
    Case(b"4,1,2,c;line1\\x0aline2 back\\x5cslash caf\\xc3\\xa9\n",
         "line1\nline2 back\\slash café", 0, 4, 1, 2, {}),
    # invalid UTF-8 (raw and escaped) becomes U+FFFD, never an exception
    Case(b"6,2,3,-;bad \xff raw and \\xfe escaped\n",
         "bad \ufffd raw and \ufffd escaped", 0, 6, 2, 3, {}),
    # escaped value in a continuation line; a "KEY=" with empty value; no trailing \n
    Case(b"30,9,10,-;systemd[1]: started\n MSG=a\\x3db\n EMPTY=",
         "systemd[1]: started", 3, 6, 9, 10, {"MSG": "a=b", "EMPTY": ""}),
    # no flags field at all (very old kernels): tolerated
    Case(b"0,5,6;panic\n", "panic", 0, 0, 5, 6, {}),
    # empty text
    Case(b"6,7,8,-;\n", "", 0, 6, 7, 8, {}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.raw[:24].decode("latin-1"))
def test_parse_record(case: Case) -> None:
    line = parse_record(case.raw, t=42.0)
    assert line.source == "kmsg"
    assert line.text == case.text
    assert line.facility == case.facility
    assert line.priority == case.priority
    assert line.seq == case.seq
    assert line.monotonic_usec == case.usec
    assert dict(line.fields) == case.fields
    assert line.t == 42.0
    assert line.from_kernel == (case.facility == 0)


BAD = [
    b"",
    b"no semicolon here\n",
    b"6,1;too few header fields\n",
    b"x,1,2,-;not a number\n",
    b"6,-1,2,-;negative seq\n",
    b"\x00\xff\xfe;binary\n",
]


@pytest.mark.parametrize("raw", BAD)
def test_bad_record_is_a_clear_error(raw: bytes) -> None:
    with pytest.raises(KmsgParseError, match="kmsg"):
        parse_record(raw)


def test_unescape_leaves_a_lone_backslash() -> None:
    assert unescape(b"a\\b \\x4 \\x41") == "a\\b \\x4 A"


# --------------------------------------------------------------------------- position file
def test_position_round_trip(tmp_path: Path) -> None:
    state = tmp_path / "kmsg.json"
    save_position(state, KmsgPosition("boot-a", 77))
    assert load_position(state) == KmsgPosition("boot-a", 77)
    assert not (tmp_path / "kmsg.json.tmp").exists()


@pytest.mark.parametrize(
    "content", ["", "not json", "[]", '{"boot_id": "b"}', '{"boot_id": 1, "seq": 2}',
                '{"boot_id": "b", "seq": true}', '{"boot_id": "b", "seq": "3"}']
)
def test_damaged_position_is_no_position(tmp_path: Path, content: str) -> None:
    state = tmp_path / "kmsg.json"
    state.write_text(content)
    assert load_position(state) is None


# --------------------------------------------------------------------------- follower
Item = bytes | BaseException


class ScriptedKmsg:
    """A KmsgDevice that plays back records and errors, then reports EAGAIN (None)."""

    def __init__(self, items: list[Item]) -> None:
        self.items: deque[Item] = deque(items)
        self.seeks = 0
        self.closed = False

    def fileno(self) -> int:
        return 99

    def read_record(self) -> bytes | None:
        if not self.items:
            return None
        item = self.items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    def seek_start(self) -> None:
        self.seeks += 1

    def close(self) -> None:
        self.closed = True


def rec(seq: int, text: str = "", fac: int = 0) -> bytes:
    return f"{fac * 8 + 6},{seq},{seq * 1000},-;{text or f'line {seq}'}\n".encode()


@pytest.fixture
def boot_id(tmp_path: Path) -> Path:
    p = tmp_path / "boot_id"
    p.write_text("11111111-2222-3333-4444-555555555555\n")
    return p


def follower(
    tmp_path: Path, boot_id: Path, dev: ScriptedKmsg, clock: FakeClock | None = None
) -> KmsgFollower:
    def opener(path: Path) -> KmsgDevice:
        assert path == Path("/dev/kmsg")
        return dev

    return KmsgFollower(
        tmp_path / "kmsg.json", clock or FakeClock(), boot_id_path=boot_id,
        opener=opener, save_interval_s=0.0,
    )


def test_without_state_reads_the_whole_ring(tmp_path: Path, boot_id: Path) -> None:
    dev = ScriptedKmsg([rec(0), rec(1), rec(2, fac=1)])
    clock = FakeClock(start=500.0)
    f = follower(tmp_path, boot_id, dev, clock)
    lines = f.read_available()
    assert [ln.seq for ln in lines] == [0, 1, 2]
    assert [ln.facility for ln in lines] == [0, 0, 1]
    assert {ln.t for ln in lines} == {500.0}
    assert dev.seeks == 1 and not f.resumed
    assert f.fileno() == 99
    assert f.read_available() == []  # EAGAIN: nothing more now
    f.close()
    assert dev.closed
    assert load_position(tmp_path / "kmsg.json") == KmsgPosition(
        "11111111-2222-3333-4444-555555555555", 2)


def test_resume_skips_what_was_delivered(tmp_path: Path, boot_id: Path) -> None:
    save_position(tmp_path / "kmsg.json",
                  KmsgPosition("11111111-2222-3333-4444-555555555555", 5))
    dev = ScriptedKmsg([rec(s) for s in range(3, 9)])
    f = follower(tmp_path, boot_id, dev)
    assert f.resumed
    assert [ln.seq for ln in f.read_available()] == [6, 7, 8]
    assert f.lost == 0


def test_resume_counts_records_overwritten_while_down(tmp_path: Path, boot_id: Path) -> None:
    save_position(tmp_path / "kmsg.json",
                  KmsgPosition("11111111-2222-3333-4444-555555555555", 5))
    dev = ScriptedKmsg([rec(s) for s in range(10, 12)])
    f = follower(tmp_path, boot_id, dev)
    assert [ln.seq for ln in f.read_available()] == [10, 11]
    assert f.lost == 4  # 6, 7, 8, 9


def test_resume_overrun_among_delivered_records_loses_nothing(
    tmp_path: Path, boot_id: Path
) -> None:
    """A busy ring overwrote its oldest records while the follower skipped past them."""
    save_position(tmp_path / "kmsg.json",
                  KmsgPosition("11111111-2222-3333-4444-555555555555", 5))
    dev = ScriptedKmsg([rec(1), BrokenPipeError(32, "overwritten"), rec(4), rec(5), rec(6)])
    f = follower(tmp_path, boot_id, dev)
    assert [ln.seq for ln in f.read_available()] == [6]
    assert (f.overruns, f.lost) == (1, 0)


def test_other_boot_reads_the_whole_ring(tmp_path: Path, boot_id: Path) -> None:
    save_position(tmp_path / "kmsg.json", KmsgPosition("an-earlier-boot", 500))
    dev = ScriptedKmsg([rec(0), rec(1)])
    f = follower(tmp_path, boot_id, dev)
    assert not f.resumed
    assert [ln.seq for ln in f.read_available()] == [0, 1]
    assert f.lost == 0


def test_epipe_is_counted_and_reading_goes_on(tmp_path: Path, boot_id: Path) -> None:
    dev = ScriptedKmsg([rec(0), rec(1), BrokenPipeError(32, "overwritten"), rec(7), rec(8)])
    f = follower(tmp_path, boot_id, dev)
    assert [ln.seq for ln in f.read_available()] == [0, 1, 7, 8]
    assert (f.overruns, f.lost) == (1, 5)  # seq 2..6 were overwritten


def test_epipe_before_any_record_counts_at_least_one(tmp_path: Path, boot_id: Path) -> None:
    dev = ScriptedKmsg([BrokenPipeError(32, "overwritten"), rec(40)])
    f = follower(tmp_path, boot_id, dev)
    assert [ln.seq for ln in f.read_available()] == [40]
    assert (f.overruns, f.lost) == (1, 1)


def test_seq_gap_without_epipe_is_counted(tmp_path: Path, boot_id: Path) -> None:
    dev = ScriptedKmsg([rec(0), rec(3), rec(4), rec(10)])
    f = follower(tmp_path, boot_id, dev)
    f.read_available()
    assert (f.overruns, f.lost) == (0, 2 + 5)
    assert f.stats().last_seq == 10


def test_bad_record_is_skipped_and_counted(tmp_path: Path, boot_id: Path) -> None:
    dev = ScriptedKmsg([rec(0), b"garbage without header", rec(1)])
    f = follower(tmp_path, boot_id, dev)
    assert [ln.seq for ln in f.read_available()] == [0, 1]
    assert f.bad_records == 1


def test_position_saved_only_for_records_already_handed_out(
    tmp_path: Path, boot_id: Path
) -> None:
    dev = ScriptedKmsg([rec(0), rec(1)])
    f = follower(tmp_path, boot_id, dev)
    state = tmp_path / "kmsg.json"
    assert [ln.seq for ln in f.read_available()] == [0, 1]
    assert not state.exists()  # the caller has not processed them yet
    dev.items.append(rec(2))
    f.read_available()  # the loop came back: 0 and 1 are done
    assert json.loads(state.read_text())["seq"] == 1
    f.save()
    assert json.loads(state.read_text())["seq"] == 2


def test_save_interval_limits_fsyncs(tmp_path: Path, boot_id: Path) -> None:
    clock = FakeClock()
    dev = ScriptedKmsg([rec(0)])
    f = KmsgFollower(tmp_path / "kmsg.json", clock, boot_id_path=boot_id,
                     opener=lambda _p: dev, save_interval_s=10.0)
    state = tmp_path / "kmsg.json"
    f.read_available()
    dev.items.append(rec(1))
    f.read_available()
    assert not state.exists()
    clock.advance(10.0)
    f.read_available()
    assert load_position(state) == KmsgPosition("11111111-2222-3333-4444-555555555555", 1)


def test_max_records_per_call_keeps_the_loop_responsive(tmp_path: Path, boot_id: Path) -> None:
    dev = ScriptedKmsg([rec(s) for s in range(25)])
    f = KmsgFollower(tmp_path / "kmsg.json", FakeClock(), boot_id_path=boot_id,
                     opener=lambda _p: dev, max_records_per_call=10)
    sizes = [len(f.read_available()) for _ in range(4)]
    assert sizes == [10, 10, 5, 0]
    assert f.lost == 0


def test_read_error_ends_the_batch_without_crashing(tmp_path: Path, boot_id: Path) -> None:
    dev = ScriptedKmsg([rec(0), OSError(22, "Invalid argument"), rec(1)])
    f = follower(tmp_path, boot_id, dev)
    assert [ln.seq for ln in f.read_available()] == [0]
    assert f.stats().read_errors == 1 and "Invalid argument" in f.last_error
    assert [ln.seq for ln in f.read_available()] == [1]


def test_position_that_cannot_be_written_is_counted_and_reading_goes_on(
    tmp_path: Path, boot_id: Path
) -> None:
    """A full or broken state disk must not stop the kernel log (at least once)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    dev = ScriptedKmsg([rec(0), rec(1)])
    f = KmsgFollower(blocker / "kmsg.json", FakeClock(), boot_id_path=boot_id,
                     opener=lambda _p: dev, save_interval_s=0.0)
    assert [ln.seq for ln in f.read_available()] == [0, 1]
    dev.items.append(rec(2))
    assert [ln.seq for ln in f.read_available()] == [2]
    assert f.save_errors == 1
    assert "cannot write" in f.last_error
