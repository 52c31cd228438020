"""Run a slow measurement on its own cadence in a worker thread, and cache the latest.

Filesystem use (a hung NFS mount can block statvfs) and the mail-queue size (a command
that may take seconds on a big queue) must never stall the per-second sampling loop:
the loop only reads the cached value, with its age.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from agent.clock import Clock

T = TypeVar("T")

log = logging.getLogger(__name__)


class Periodic(Generic[T]):
    """Calls `measure()` every `interval_s` in a daemon thread; `latest()` is the cache.

    `run_once()` runs one measurement in the caller's thread (tests and one-shot
    commands use it without starting the thread). Times are the clock's monotonic time.
    """

    def __init__(
        self, name: str, measure: Callable[[], T], interval_s: float, clock: Clock
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self._measure = measure
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: tuple[T, float] | None = None
        self._stop = threading.Event()
        self._measured = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> T:
        value = self._measure()
        with self._lock:
            self._latest = (value, self._clock.monotonic())
        self._measured.set()
        return value

    def latest(self) -> tuple[T, float] | None:
        """The last measured value and when it was taken, or None before the first."""
        with self._lock:
            return self._latest

    def wait_first(self, timeout_s: float) -> bool:
        """Block until the first measurement is cached (for one-shot commands)."""
        return self._measured.wait(timeout_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"nodewarden-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self, join_timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(join_timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a bug in one measurement must not end the cadence
                log.exception("%s measurement failed", self.name)
            self._stop.wait(self.interval_s)
