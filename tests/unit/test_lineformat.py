"""parse_line: every input format `nodewarden scan` accepts, alone and mixed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from agent.model import LogLine
from agent.sources import lineformat
from agent.sources.lineformat import parse_line


@dataclass(frozen=True)
class Case:
    raw: str
    text: str
    facility: int | None = None
    priority: int | None = None
    seq: int | None = None
    usec: int | None = None
    fields: dict[str, str] = field(default_factory=dict)


MSG = "INFO: task nfsd:1234 blocked for more than 120 seconds."
CASES = [
    # plain kernel text: nothing known
    Case(MSG, MSG),
    Case("EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2",
         "EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2"),
    Case("8021q: adding VLAN 0 to HW filter on device eth0",
         "8021q: adding VLAN 0 to HW filter on device eth0"),  # digit first, not kmsg
    Case("sd 0:0:0:0: [sda] tag#0 FAILED", "sd 0:0:0:0: [sda] tag#0 FAILED"),
    Case("nfs: server nas-a1 not responding, still trying",
         "nfs: server nas-a1 not responding, still trying"),
    Case("Out of memory: Killed process 42 (dovecot)",
         "Out of memory: Killed process 42 (dovecot)"),  # "Out" is not a month
    Case("[bracket] that is not a timestamp", "[bracket] that is not a timestamp"),
    Case("<not a priority", "<not a priority"),
    Case("", ""),
    # raw /dev/kmsg records
    Case(f"3,1234,5678,-;{MSG}\n", MSG, 0, 3, 1234, 5678),
    Case(f"14,1235,5679,-,caller=T1;{MSG}", MSG, 1, 6, 1235, 5679),
    Case("6,7,8,-;a\\x0ab caf\\xc3\\xa9", "a\nb café", 0, 6, 7, 8),
    # dmesg and dmesg -T
    Case(f"[  123.456789] {MSG}\n", MSG, usec=123_456_789),
    Case(f"[    0.000000] {MSG}", MSG, usec=0),
    Case(f"[12345.5] {MSG}", MSG, usec=12_345_500_000),
    Case(f"[Wed Oct 20 03:18:44 2021] {MSG}", MSG),
    Case(f"[Wed Oct  2 03:18:44 2021] {MSG}", MSG),
    # dmesg --time-format iso (comma before the fraction, no host or tag)
    Case(f"2021-10-20T03:18:44,123456+00:00 {MSG}", MSG),
    Case("2021-10-20T03:18:44,123456+0200 sd 0:0:0:0: [sda] x", "sd 0:0:0:0: [sda] x"),
    # dmesg -r and dmesg -x
    # dmesg -r prints a bare level for userspace records too: facility unknown
    Case(f"<6>[    1.500000] {MSG}", MSG, None, 6, usec=1_500_000),
    Case(f"<14>[    1.500000] {MSG}", MSG, 1, 6, usec=1_500_000),
    Case(f"<3>{MSG}", MSG, None, 3),
    Case(f"kern  :info  : [    0.000001] {MSG}", MSG, 0, 6, usec=1),
    Case(f"kern  :err   : [Wed Oct 20 03:18:44 2021] {MSG}", MSG, 0, 3),
    Case(f"user  :warn  : [   10.000000] {MSG}", MSG, 1, 4, usec=10_000_000),
    Case(f"daemon:notice: {MSG}", MSG, 3, 5),
    Case(f"authpriv:debug : {MSG}", MSG, 10, 7),
    # syslog / journalctl -k
    Case(f"Oct 20 03:18:44 nas-a1 kernel: [ 12.345678] {MSG}", MSG, 0, usec=12_345_678,
         fields={"host": "nas-a1", "tag": "kernel"}),
    Case(f"Oct  2 03:18:44 nas-a1 kernel: {MSG}\r\n", MSG, 0,
         fields={"host": "nas-a1", "tag": "kernel"}),
    Case(f"Oct 20 03:18:44.123456 nas-a1 kernel: {MSG}", MSG, 0,
         fields={"host": "nas-a1", "tag": "kernel"}),
    Case("Oct 20 03:18:44 mx1 postfix/smtpd[123]: warning: unknown[10.0.0.9]: SASL LOGIN "
         "authentication failed",
         "warning: unknown[10.0.0.9]: SASL LOGIN authentication failed", 1,
         fields={"host": "mx1", "tag": "postfix/smtpd", "pid": "123"}),
    Case(f"Oct 20 03:18:44 mx1 logger: {MSG}", MSG, 1, fields={"host": "mx1", "tag": "logger"}),
    # RFC 3339 syslog (rsyslog) and journalctl -o short-iso
    Case(f"2021-10-20T03:18:44.123456+00:00 nas-a1 kernel: {MSG}", MSG, 0,
         fields={"host": "nas-a1", "tag": "kernel"}),
    Case(f"2021-10-20T03:18:44+0000 nas-a1 kernel: [  1.000000] {MSG}", MSG, 0,
         usec=1_000_000, fields={"host": "nas-a1", "tag": "kernel"}),
    Case("2021-10-20T03:18:44Z mx1 dovecot[77]: imap-login: Disconnected",
         "imap-login: Disconnected", 1, fields={"host": "mx1", "tag": "dovecot", "pid": "77"}),
    # a month-looking start that is not syslog stays whole
    Case("Oct is not a timestamp", "Oct is not a timestamp"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.raw[:40])
def test_parse_line(case: Case) -> None:
    line = parse_line(case.raw, source="kmsg", t=7.0)
    assert line.text == case.text
    assert line.facility == case.facility
    assert line.priority == case.priority
    assert line.seq == case.seq
    assert line.monotonic_usec == case.usec
    assert dict(line.fields) == case.fields
    assert line.source == "kmsg" and line.t == 7.0
    assert parse_line(case.raw).text == case.text
    # parse_line builds lines without LogLine.__init__ (speed): same fields, same value
    assert vars(line).keys() == vars(LogLine(source="", text="", t=0.0)).keys()
    built = LogLine(
        source="kmsg", text=case.text, t=7.0, facility=case.facility, priority=case.priority,
        seq=case.seq, monotonic_usec=case.usec, fields=line.fields,
    )
    assert line == built


def test_mixed_input_detected_per_line() -> None:
    mixed = [
        "5,0,0,-;Linux version 6.1.0",
        "[    1.000000] Linux version 6.1.0",
        "Oct 20 03:18:44 h kernel: Linux version 6.1.0",
        "kern  :notice: [    0.000000] Linux version 6.1.0",
        "Linux version 6.1.0",
    ]
    lines = [parse_line(r) for r in mixed]
    assert {ln.text for ln in lines} == {"Linux version 6.1.0"}
    assert [ln.facility for ln in lines] == [0, None, 0, 0, None]


def test_source_is_passed_through() -> None:
    assert parse_line("x", source="log:mail").source == "log:mail"


@pytest.mark.parametrize("raw", ["\x00\x01\x02", "\ufffd\ufffd", "[", "<", "9", "Oct", "kern:",
                                 "1,2,3,", "2021-10-20T", "x" * 100_000])
def test_garbage_never_raises(raw: str) -> None:
    assert parse_line(raw).text == raw


def _stamp_by_hand(line: str) -> tuple[str, int] | None:
    """The fast dmesg stamp read step by step (the code before the regex): the first "]"
    among the first 24 characters, spaces, ASCII digits, ".", ASCII digits."""
    end = line.find("]", 1, 24)
    if end > 0:
        sec, dot, frac = line[1:end].lstrip(" ").partition(".")
        if dot and sec.isdigit() and frac.isdigit() and sec.isascii() and frac.isascii():
            text = line[end + 2 :] if line[end + 1 : end + 2] == " " else line[end + 1 :]
            return text, int(sec) * 1_000_000 + int((frac + "000000")[:6])
    return None


def test_the_fast_stamp_reads_what_the_plain_reading_reads() -> None:
    rng = random.Random(5)
    alphabet = " 0123456789.]][a\u0661x"
    for _ in range(20000):
        line = "[" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        want = _stamp_by_hand(line)
        assert (lineformat._FAST_STAMP.match(line) is None) == (want is None), line
        if want is not None:
            got = parse_line(line)
            assert (got.text, got.monotonic_usec) == want, line
