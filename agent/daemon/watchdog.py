"""systemd notification and watchdog pings (docs/architecture.md, safety property 9).

The agent runs as `Type=notify` with `WatchdogSec=`: it says READY=1 once it is really
watching, a one-line STATUS= each cycle, STOPPING=1 on the way out, and WATCHDOG=1 at
half of `WATCHDOG_USEC` -- but only from the main loop, so a hung loop stops pinging and
systemd kills and restarts it.

The sender is our own (a non-blocking datagram to `$NOTIFY_SOCKET`) rather than sdnotify
0.3, whose blocking socket hangs once systemd stops reading (measured: docs/facts.md),
which connects once, swallows every error and knows nothing of the watchdog: here a
failed send is logged once, and the watchdog interval is read from `WATCHDOG_USEC` /
`WATCHDOG_PID`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)

#: systemd truncates nothing, but a STATUS= line is meant to be one short sentence
MAX_STATUS_CHARS = 200


class Notifier(Protocol):
    def notify(self, message: str) -> None:
        """Send one `KEY=value[\\nKEY=value]` message; never raises."""


class NullNotifier:
    """Not started by systemd (no `$NOTIFY_SOCKET`): nothing to tell."""

    def notify(self, message: str) -> None:
        return None


class SocketNotifier:
    """Sends sd_notify datagrams to a socket path (`@name` = abstract namespace)."""

    def __init__(self, address: str) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        # Non-blocking: a receiver that does not read (a busy PID 1, a test) fills the
        # datagram queue, and a blocking send would hang the loop it is meant to watch.
        self._sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        self._failing = False
        self.sent = 0
        self.errors = 0

    def notify(self, message: str) -> None:
        try:
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            self.errors += 1
            if not self._failing:  # once per failing stretch, not once a second
                log.error("cannot notify systemd at %s: %s", self.address.lstrip("\0"),
                          exc.strerror or exc)
            self._failing = True
            return
        self._failing = False
        self.sent += 1

    def close(self) -> None:
        self._sock.close()


def notifier_from_env(env: Mapping[str, str]) -> Notifier:
    address = env.get("NOTIFY_SOCKET", "")
    return SocketNotifier(address) if address else NullNotifier()


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is asked for.

    `WATCHDOG_PID`, when set, names the process that must ping: if it is not us (a child
    that inherited the environment), we must not ping.
    """
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return usec / 2_000_000


def status_message(summary: str) -> str:
    """A STATUS= message: one line, bounded."""
    line = " ".join(summary.split())
    if len(line) > MAX_STATUS_CHARS:
        line = line[: MAX_STATUS_CHARS - 1] + "…"
    return f"STATUS={line}"


class WatchdogPinger:
    """Decides when the main loop pings: every `interval_s` (monotonic seconds)."""

    def __init__(self, notifier: Notifier, interval_s: float | None, now: float) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self._last = now
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def next_due(self) -> float | None:
        """Monotonic time of the next ping, or None without a watchdog."""
        return None if self.interval_s is None else self._last + self.interval_s

    def tick(self, now: float, *, healthy: bool = True) -> bool:
        """Ping when due and the loop is healthy; returns whether it pinged."""
        due = self.next_due()
        if due is None or now < due or not healthy:
            return False
        self.notifier.notify("WATCHDOG=1")
        self._last = now
        self.pings += 1
        return True

    def ping_now(self, now: float) -> None:
        """Ping at once (after start-up, before READY=1 is acted on)."""
        if self.interval_s is not None:
            self.notifier.notify("WATCHDOG=1")
            self._last = now
            self.pings += 1
