"""Protocol parsing edge cases of the probes, against scripted servers on loopback, and the
probe scheduler's bookkeeping with a fake clock."""

from __future__ import annotations

import base64
import os
import selectors
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.clock import Clock, FakeClock, SystemClock
from agent.model import ProbeResult
from agent.sources.probeconn import MAX_LINE_BYTES
from agent.sources.probes import MAX_REPLY_LINES, run_probe
from agent.sources.probescheduler import ProbeScheduler
from agent.sources.settings import ProbeSettings
from tests.unit._scripted_server import (
    Call,
    Close,
    Expect,
    Forever,
    ScriptedServer,
    Send,
    Step,
    Trickle,
)

BASE = ProbeSettings(name="t", kind="tcp", read_timeout_s=2.0, connect_timeout_s=2.0)


def run(
    script: list[Step], clock: Clock | None = None, **kw: Any
) -> tuple[ProbeResult, list[bytes]]:
    with ScriptedServer(script) as server:
        result = run_probe(replace(BASE, port=server.port, **kw), clock or SystemClock())
        server.wait_done(2.0)
        return result, server.received


def pwfile(tmp_path: Path, secret: str) -> Path:
    path = tmp_path / "canary.pw"
    path.write_text(secret)
    return path


# --------------------------------------------------------------------------- greetings
@pytest.mark.parametrize(
    ("kind", "greeting", "detail"),
    [
        ("imap", b"* BYE too many connections\r\n",
         "imap: server refused the connection: * BYE too many connections"),
        ("imap", b"HTTP/1.0 400 Bad Request\r\n",
         "imap: unexpected greeting: HTTP/1.0 400 Bad Request"),
        ("pop3", b"-ERR [SYS/TEMP] busy\r\n", "pop3: unexpected greeting: -ERR [SYS/TEMP] busy"),
        ("pop3", b"\x00\xff\xfe\r\n", "pop3: unexpected greeting: \x00\ufffd\ufffd"),
        ("smtp", b"554 5.3.2 no service here\r\n",
         "smtp: unexpected greeting: 554 5.3.2 no service here"),
        ("smtp", b"421-going\r\n421 down\r\n", "smtp: unexpected greeting: 421 going"),
        ("smtp", b"hello there\r\n", "smtp: malformed reply while reading greeting: hello there"),
    ],
)
def test_bad_greeting_fails_with_the_server_text(kind: str, greeting: bytes, detail: str) -> None:
    result, _ = run([Send(greeting)], kind=kind)
    assert (result.ok, result.detail) == (False, detail)
    assert result.latency_ms is not None


@pytest.mark.parametrize("kind", ["imap", "pop3", "smtp"])
def test_endless_line_is_cut_at_the_line_cap(kind: str) -> None:
    result, _ = run([Send(b"* OK "), Forever(b"A" * 4096)], kind=kind)
    assert not result.ok
    assert result.detail == (
        f"{kind}: reply line longer than {MAX_LINE_BYTES} bytes while reading greeting"
    )


def test_endless_multiline_smtp_greeting_is_cut_at_the_line_count() -> None:
    result, _ = run([Forever(b"220-still greeting\r\n")], kind="smtp")
    assert result.detail == f"smtp: more than {MAX_REPLY_LINES} reply lines while reading greeting"


def test_endless_untagged_imap_lines_are_cut_at_the_line_count(tmp_path: Path) -> None:
    result, _ = run(
        [Send(b"* OK hi\r\n"), Expect(), Forever(b"* 1 EXISTS\r\n")],
        kind="imap", login_user="u", login_password_file=pwfile(tmp_path, "p"),
    )
    assert result.detail == (
        f"imap: more than {MAX_REPLY_LINES} reply lines while waiting for LOGIN reply"
    )


@pytest.mark.parametrize("kind", ["imap", "pop3", "smtp", "http"])
def test_server_closing_at_once_is_reported(kind: str) -> None:
    result, _ = run([Expect(), Close()] if kind == "http" else [Close()], kind=kind)
    step = "reading response headers" if kind == "http" else "reading greeting"
    assert not result.ok
    assert result.detail == f"{kind}: connection closed by server while {step}"


def test_a_trickling_server_cannot_stretch_the_read_deadline() -> None:
    # Every recv gets a byte well within the timeout; the step as a whole must not.
    result, _ = run([Trickle(b"* OK slowly ready\r\n", 0.05)], kind="imap", read_timeout_s=0.3)
    assert result.detail == "imap: timeout after 0.3s reading greeting"


# --------------------------------------------------------------------------- full dialogues
def test_imap_login_quotes_and_logs_out(tmp_path: Path) -> None:
    result, received = run(
        [Send(b"* OK ready\r\n"), Expect(), Send(b"* CAPABILITY IMAP4rev1\r\na2 OK in\r\n"),
         Expect(), Send(b"* BYE bye\r\na3 OK out\r\n")],
        kind="imap", login_user='ca"n\\ary', login_password_file=pwfile(tmp_path, 'p w"d\n'),
    )
    assert (result.ok, result.detail) == (True, "imap: greeting OK, login OK")
    assert received == [b'a2 LOGIN "ca\\"n\\\\ary" "p w\\"d"\r\n', b"a3 LOGOUT\r\n"]


def test_imap_non_ascii_password_goes_as_a_literal(tmp_path: Path) -> None:
    secret = "pässwörd"
    size = len(secret.encode())
    result, received = run(
        [Send(b"* OK ready\r\n"), Expect(), Send(b"+ go ahead\r\n"), Expect(),
         Send(b"a2 OK in\r\n"), Expect(), Send(b"a3 OK out\r\n")],
        kind="imap", login_user="canary", login_password_file=pwfile(tmp_path, secret + "\n"),
    )
    assert result.ok, result.detail
    assert received[0] == b'a2 LOGIN "canary" {%d}\r\n' % size
    assert received[1] == secret.encode() + b"\r\n"


def test_imap_rejected_login_never_shows_the_password(tmp_path: Path) -> None:
    result, _ = run(
        [Send(b"* OK ready\r\n"), Expect(), Send(b"a2 NO [AUTHENTICATIONFAILED] nope\r\n")],
        kind="imap", login_user="canary", login_password_file=pwfile(tmp_path, "hunter2"),
    )
    assert result.detail == "imap: login rejected: a2 NO [AUTHENTICATIONFAILED] nope"
    assert "hunter2" not in result.detail


def test_imap_starttls_refused() -> None:
    result, received = run(
        [Send(b"* OK ready\r\n"), Expect(), Send(b"a1 BAD not now\r\n")],
        kind="imap", tls="starttls",
    )
    assert result.detail == "imap: STARTTLS refused: a1 BAD not now"
    assert received == [b"a1 STARTTLS\r\n"]


def test_plaintext_injected_after_starttls_is_refused() -> None:
    # CVE-2011-0411 style: data pipelined behind the STARTTLS reply must not be trusted.
    result, _ = run(
        [Send(b"* OK ready\r\n"), Expect(), Send(b"a1 OK begin TLS\r\n* injected\r\n")],
        kind="imap", tls="starttls",
    )
    assert result.detail == (
        "imap: server sent data before the TLS handshake while waiting for STARTTLS reply"
    )


def test_pop3_user_pass_strips_the_trailing_newline(tmp_path: Path) -> None:
    result, received = run(
        [Send(b"+OK POP3 ready\r\n"), Expect(), Send(b"+OK\r\n"), Expect(), Send(b"+OK in\r\n"),
         Expect(), Send(b"+OK bye\r\n")],
        kind="pop3", login_user="canary", login_password_file=pwfile(tmp_path, "s3cret\r\n"),
    )
    assert (result.ok, result.detail) == (True, "pop3: greeting OK, login OK")
    assert received == [b"USER canary\r\n", b"PASS s3cret\r\n", b"QUIT\r\n"]


def test_pop3_password_with_a_line_break_is_not_sent(tmp_path: Path) -> None:
    result, received = run(
        [Send(b"+OK POP3 ready\r\n")],
        kind="pop3", login_user="canary", login_password_file=pwfile(tmp_path, "a\nQUIT\n"),
    )
    assert result.detail == "pop3: password contains CR, LF or NUL, which POP3 cannot send"
    assert received == []


def test_smtp_multiline_greeting_ehlo_and_auth_plain(tmp_path: Path) -> None:
    result, received = run(
        [Send(b"220-mx.example ESMTP\r\n220 welcome\r\n"), Expect(),
         Send(b"250-mx.example\r\n250-PIPELINING\r\n250 AUTH LOGIN PLAIN\r\n"), Expect(),
         Send(b"235 2.7.0 ok\r\n"), Expect(), Send(b"221 bye\r\n")],
        kind="smtp", login_user="canary", login_password_file=pwfile(tmp_path, "pw\n"),
    )
    assert (result.ok, result.detail) == (True, "smtp: greeting 220, login OK")
    assert received[0] == b"EHLO [127.0.0.1]\r\n"
    assert received[1] == b"AUTH PLAIN " + base64.b64encode(b"\0canary\0pw") + b"\r\n"
    assert received[2] == b"QUIT\r\n"


def test_smtp_starttls_not_offered() -> None:
    result, _ = run(
        [Send(b"220 hi\r\n"), Expect(), Send(b"250-mx\r\n250 PIPELINING\r\n")],
        kind="smtp", tls="starttls",
    )
    assert result.detail == "smtp: server does not offer STARTTLS"


def test_smtp_broken_quit_still_counts_as_success() -> None:
    result, _ = run([Send(b"220 hi\r\n"), Expect(), Send(b"250 mx\r\n")], kind="smtp",
                    read_timeout_s=0.2)
    assert (result.ok, result.detail) == (True, "smtp: greeting 220")


# --------------------------------------------------------------------------- http
def test_http_chunked_body_text_is_found_across_chunks() -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nRound\r\n4\r\ncube\r\n0\r\n\r\n"
    )
    result, received = run([Expect(), Send(response)], kind="http", expect_text="Roundcube")
    assert (result.ok, result.detail) == (True, "http: status 200, expect_text found")
    assert received == [b"GET / HTTP/1.1\r\n"]


def test_http_endless_header_line_is_malformed() -> None:
    result, _ = run([Expect(), Send(b"HTTP/1.1 200 OK\r\nX: "), Forever(b"a" * 4096)], kind="http")
    assert result.detail == "http: malformed response while reading response headers: LineTooLong"


def test_http_endless_body_is_read_only_up_to_the_cap() -> None:
    result, _ = run(
        [Expect(), Send(b"HTTP/1.1 200 OK\r\n\r\n"), Forever(b"z" * 4096)],
        kind="http", expect_text="Roundcube",
    )
    assert not result.ok
    assert result.detail.endswith("not in the first 1048576 bytes of the body")


def test_http_garbage_status_line() -> None:
    result, _ = run([Expect(), Send(b"SSH-2.0-OpenSSH_9.2\r\n")], kind="http")
    assert result.detail.startswith("http: malformed response while reading response headers")


# --------------------------------------------------------------------------- misc
def test_latency_is_measured_with_the_injected_clock() -> None:
    clock = FakeClock()
    result, _ = run([Call(lambda: clock.advance(1.5)), Send(b"hello\r\n")], clock=clock,
                    kind="tcp", expect_text="hello")
    assert (result.ok, result.latency_ms) == (True, 1500.0)
    assert result.t == FakeClock().now()


def test_unknown_kind_and_missing_password_file_do_not_raise(tmp_path: Path) -> None:
    bogus = run_probe(replace(BASE, kind="gopher", port=1), SystemClock())
    assert (bogus.ok, bogus.detail) == (False, "gopher: unknown probe kind")
    missing = run_probe(
        replace(BASE, kind="imap", port=1, login_user="u",
                login_password_file=tmp_path / "absent"),
        SystemClock(),
    )
    assert not missing.ok
    assert missing.detail == (
        f"imap: cannot read login_password_file {tmp_path / 'absent'}: No such file or directory"
    )


# --------------------------------------------------------------------------- scheduler
class GatedRunner:
    """A probe runner whose runs finish only when the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[str] = []

    def __call__(self, settings: ProbeSettings, clock: Clock) -> ProbeResult:
        self.calls.append(settings.name)
        if settings.kind == "imap":
            raise RuntimeError("boom")
        self.gate.wait(10)
        return ProbeResult(clock.now(), settings.name, True, 1.0, "tcp: connected")


def wait_readable(fd: int, timeout: float = 5.0) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def test_scheduler_runs_each_probe_on_its_interval_one_at_a_time() -> None:
    clock = FakeClock()
    a = replace(BASE, name="a", interval_s=10.0)
    b = replace(BASE, name="b", interval_s=30.0)
    runner = GatedRunner()
    with ProbeScheduler([a, b], clock, run=runner) as sched:
        assert sched.due(clock.monotonic()) == [a, b]
        assert sched.tick(clock.monotonic()) == ["a", "b"]
        assert sched.due(clock.monotonic() + 100) == []  # both in flight: never twice
        assert sched.next_due_in(clock.monotonic()) is None
        assert sched.drain() == []
        runner.gate.set()
        assert wait_readable(sched.fileno())
        results: list[ProbeResult] = []
        while len(results) < 2 and wait_readable(sched.fileno()):
            results += sched.drain()
        assert sorted(r.name for r in results) == ["a", "b"]
        assert sched.in_flight() == []
        assert sched.due(clock.monotonic() + 9.9) == []
        assert sched.next_due_in(clock.monotonic()) == 10.0
        assert sched.due(clock.monotonic() + 10.0) == [a]
        assert sched.due(clock.monotonic() + 30.0) == [a, b]


def test_scheduler_turns_a_raising_runner_into_a_failed_result() -> None:
    clock = FakeClock()
    runner = GatedRunner()
    with ProbeScheduler([replace(BASE, name="i", kind="imap")], clock, run=runner) as sched:
        sched.tick(clock.monotonic())
        assert wait_readable(sched.fileno())
        (result,) = sched.drain()
        assert (result.name, result.ok) == ("i", False)
        assert result.detail == "imap: internal error: RuntimeError: boom"
        assert sched.in_flight() == []


def test_a_run_finishing_after_close_writes_nowhere() -> None:
    clock = FakeClock()
    runner = GatedRunner()
    sched = ProbeScheduler([replace(BASE, name="late")], clock, run=runner)
    sched.tick(clock.monotonic())
    old_write_fd = sched._write_fd
    sched.close()
    reader, writer = os.pipe()
    os.dup2(writer, old_write_fd)  # the freed number now belongs to someone else
    try:
        runner.gate.set()
        (worker,) = [t for t in threading.enumerate() if t.name == "probe-late"]
        worker.join(5)
        assert not worker.is_alive()
        with selectors.DefaultSelector() as sel:
            sel.register(reader, selectors.EVENT_READ)
            assert sel.select(0) == []
    finally:
        for fd in {reader, writer, old_write_fd}:
            os.close(fd)
