"""The watchdog interval from systemd's environment, and when the loop pings."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.daemon.watchdog import (
    MAX_STATUS_CHARS,
    SocketNotifier,
    WatchdogPinger,
    notifier_from_env,
    status_message,
    watchdog_interval,
)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, message: str) -> None:
        self.messages.append(message)


@pytest.mark.parametrize(
    ("env", "pid", "want"),
    [
        ({}, 10, None),
        ({"WATCHDOG_USEC": "30000000"}, 10, 15.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "10"}, 10, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "11"}, 10, None),  # not ours
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}, 10, None),
        ({"WATCHDOG_USEC": "0"}, 10, None),
        ({"WATCHDOG_USEC": "-5"}, 10, None),
        ({"WATCHDOG_USEC": "soon"}, 10, None),
        ({"WATCHDOG_USEC": ""}, 10, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], pid: int, want: float | None
) -> None:
    assert watchdog_interval(env, pid) == want


def test_pinger_pings_at_its_interval_only_when_healthy() -> None:
    clock = FakeClock()
    rec = Recorder()
    pinger = WatchdogPinger(rec, 1.5, clock.monotonic())
    assert pinger.next_due() == 1.5
    assert not pinger.tick(clock.monotonic())  # not due yet
    clock.advance(1.5)
    assert not pinger.tick(clock.monotonic(), healthy=False)  # a sick loop stays silent
    assert rec.messages == []
    assert pinger.tick(clock.monotonic())
    assert rec.messages == ["WATCHDOG=1"]
    assert pinger.next_due() == 3.0
    clock.advance(1.0)
    assert not pinger.tick(clock.monotonic())
    assert pinger.pings == 1


def test_pinger_without_watchdog_never_pings() -> None:
    rec = Recorder()
    pinger = WatchdogPinger(rec, None, 0.0)
    assert not pinger.enabled
    assert pinger.next_due() is None
    assert not pinger.tick(1e9)
    pinger.ping_now(1e9)
    assert rec.messages == []


@pytest.mark.parametrize(
    ("summary", "want"),
    [
        ("no action: 0 findings firing; load1 0.4",
         "STATUS=no action: 0 findings firing; load1 0.4"),
        ("two\nlines", "STATUS=two lines"),
    ],
)
def test_status_message_is_one_line(summary: str, want: str) -> None:
    assert status_message(summary) == want


def test_status_message_is_bounded() -> None:
    msg = status_message("x" * 1000)
    assert len(msg) == len("STATUS=") + MAX_STATUS_CHARS
    assert msg.endswith("…")


def test_socket_notifier_sends_datagrams_and_survives_a_missing_socket() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "notify")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        try:
            notifier = notifier_from_env({"NOTIFY_SOCKET": path})
            assert isinstance(notifier, SocketNotifier)
            notifier.notify("READY=1\nSTATUS=hello")
            assert server.recv(4096) == b"READY=1\nSTATUS=hello"
            server.close()
            Path(path).unlink()
            notifier.notify("WATCHDOG=1")  # the socket is gone: counted, not raised
            notifier.notify("WATCHDOG=1")
            assert notifier.errors == 2
            assert notifier.sent == 1
            notifier.close()
        finally:
            server.close()


def test_no_notify_socket_means_a_silent_notifier() -> None:
    notifier = notifier_from_env({})
    assert not isinstance(notifier, SocketNotifier)
    notifier.notify("READY=1")  # does nothing, raises nothing


def test_a_receiver_that_never_reads_does_not_block_the_sender() -> None:
    """The datagram queue fills (net.unix.max_dgram_qlen); sends fail fast, never hang."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "notify")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        try:
            notifier = SocketNotifier(path)
            for i in range(2000):
                notifier.notify(f"STATUS=cycle {i}")
            assert notifier.sent >= 1
            assert notifier.errors >= 1  # the queue was full: counted, dropped
            notifier.close()
        finally:
            server.close()
