"""Signals for the daemon's loop: a handler only records the signal and wakes the loop.

`signal.set_wakeup_fd` writes a byte to the loop's wake-up pipe, so a `selectors` wait
ends at once; the loop then handles what was recorded between turns (TERM/INT: stop,
HUP: reload). Nothing runs inside the handler but an append.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP = (signal.SIGTERM, signal.SIGINT)


class SignalInbox:
    """The signals received and not yet handled, oldest first."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        #: set by TERM/INT at once (also ends a start-up that has not reached the loop)
        self.stopping = False
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd: int | None = None

    def install(self, wake_fd: int) -> None:
        self._old_wakeup_fd = signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
        for signum in HANDLED:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)
        if signum in STOP:
            self.stopping = True

    def take(self) -> int | None:
        """The oldest pending signal, or None."""
        return self.pending.pop(0) if self.pending else None

    def drop_reloads(self) -> None:
        """On the way out a pending HUP is moot."""
        self.pending = [s for s in self.pending if s != signal.SIGHUP]

    def restore(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        if self._old_wakeup_fd is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
