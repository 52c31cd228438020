"""Bounded background work for the daemon's loop (docs/architecture.md, convention 10: the loop
never blocks).

Slow or blocking work -- a remediation's steps, a metrics sample that measures a possibly
hung NFS mount -- runs in a small thread pool. Results come back through a queue, and a
byte on the loop's wake-up pipe makes the `selectors` loop collect them. At most one job
per key is in flight, and at most `max_jobs` in all: beyond that `submit` says no and the
caller decides what a refusal means (skip a sample, record an outcome "not run").
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


@dataclass(frozen=True)
class JobResult(Generic[K, R]):
    """What a job returned (`value`) or raised (`error`)."""

    key: K
    value: R | None
    error: BaseException | None


class WakeupPipe:
    """A non-blocking pipe: writers wake the loop; the loop drains it."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        # a full pipe already means "wake up"; a closed one means nobody listens
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.write_fd, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.read_fd, 4096):
                pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class Worker(Generic[K, R]):
    """A bounded pool of daemon threads whose results the loop collects with `drain()`.

    Daemon threads, not a ThreadPoolExecutor: a job stuck in the kernel (a hung NFS
    mount) must not keep the process from exiting on SIGTERM.
    """

    def __init__(self, name: str, wake: Callable[[], None], *, threads: int = 1,
                 max_jobs: int = 8) -> None:
        self._wake = wake
        self._max_jobs = max_jobs
        self._in_flight: set[K] = set()
        self._jobs: queue.SimpleQueue[tuple[K, Callable[[], R]] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[JobResult[K, R]] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def busy(self, key: K) -> bool:
        return key in self._in_flight

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def submit(self, key: K, job: Callable[[], R]) -> bool:
        """Queue `job` unless one for `key` is queued or running, or the pool is full."""
        if key in self._in_flight or len(self._in_flight) >= self._max_jobs:
            return False
        self._in_flight.add(key)
        self._jobs.put((key, job))
        return True

    def _serve(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            key, job = item
            try:
                result: JobResult[K, R] = JobResult(key, job(), None)
            except BaseException as exc:  # reported to the loop, never lost in a thread
                result = JobResult(key, None, exc)
            self._results.put(result)
            self._wake()

    def drain(self) -> list[JobResult[K, R]]:
        out: list[JobResult[K, R]] = []
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return out
            self._in_flight.discard(result.key)
            out.append(result)

    def shutdown(self, timeout_s: float) -> bool:
        """Stop taking work and wait up to `timeout_s` for running jobs; True if all ended."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
