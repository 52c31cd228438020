"""When to try again to open a source that failed: tenacity decides, the loop drives.

A kernel log or device monitor that cannot be opened (a container without /dev/kmsg, no
netlink, a transient EMFILE) is tried again with exponential backoff and jitter, capped,
instead of only at the next reload. tenacity's `Retrying.iter()` is a pure decision
("sleep N" after a failure); nothing sleeps here: the daemon's loop tries again on the
first sample tick after `next_at` (docs/architecture.md, convention 2: deciding is split from
doing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tenacity (~1 MiB with concurrent.futures) is imported on a failure
    from tenacity import RetryCallState
    from tenacity.wait import wait_base

#: the first retry after about a second, doubling to at most five minutes apart
FIRST_S = 1.0
MAX_S = 300.0
JITTER_S = 1.0


class Reopen:
    """The retry schedule of one source; monotonic seconds."""

    def __init__(self, wait: wait_base | None = None) -> None:
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            stop_never,
            wait_exponential_jitter,
        )

        self._retrying = Retrying(
            wait=wait or wait_exponential_jitter(initial=FIRST_S, max=MAX_S, jitter=JITTER_S),
            stop=stop_never, retry=retry_if_exception_type(OSError))
        self._state: RetryCallState | None = None
        self.next_at: float | None = None

    @property
    def attempts(self) -> int:
        """Failed attempts so far in this stretch."""
        return 0 if self._state is None else self._state.attempt_number - 1

    def failed(self, now: float, exc: OSError) -> float:
        """Record a failed open; returns the seconds until the next try."""
        from tenacity import DoSleep, RetryCallState

        if self._state is None:
            self._retrying.begin()  # fresh statistics for this stretch of failures
            self._state = RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        self._state.set_exception((type(exc), exc, exc.__traceback__))
        action = self._retrying.iter(self._state)
        if not isinstance(action, DoSleep):  # stop_never and an OSError: always a sleep
            raise TypeError(f"tenacity answered {action!r} to a failed open")
        self._state.prepare_for_next_attempt()
        self.next_at = now + float(action)
        return float(action)

    def due(self, now: float) -> bool:
        return self.next_at is not None and now >= self.next_at

