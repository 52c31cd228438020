"""`ProbeScheduler` runs the configured probes (agent/sources/probes.py) in worker threads
on their own interval and hands results back through a queue plus a wake-up pipe the
daemon's selectors loop watches, so a hanging probe never blocks the loop
(docs/architecture.md "The loop never blocks")."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.clock import Clock
from agent.model import ProbeResult
from agent.sources.probes import run_probe
from agent.sources.settings import ProbeSettings

Runner = Callable[[ProbeSettings, Clock], ProbeResult]


@dataclass
class _Slot:
    settings: ProbeSettings
    next_due: float
    in_flight: bool = False


class ProbeScheduler:
    """Runs each probe on its own interval in a worker thread; results come back by queue.

    The daemon's selectors loop watches `fileno()` (a pipe that gets a byte per result),
    calls `drain()` when it is readable and `tick(now)` on its timer. At most one run per
    probe is in flight: a probe that hangs past its interval is not started again until
    its result has been drained. `now` is the clock's monotonic time.
    """

    def __init__(
        self,
        probes: Iterable[ProbeSettings],
        clock: Clock,
        run: Runner = run_probe,
        first_due: float | None = None,
    ) -> None:
        start = clock.monotonic() if first_due is None else first_due
        self._slots = {p.name: _Slot(p, start) for p in probes}
        self._clock = clock
        self._run = run
        self._results: queue.SimpleQueue[ProbeResult] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Guards the write end: a worker finishing after close() must not write into a
        # recycled fd number that now belongs to something else.
        self._pipe_lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        """Readable when at least one result is waiting in `drain()`."""
        return self._read_fd

    def due(self, now: float) -> list[ProbeSettings]:
        """The probes whose interval has come and that are not already running."""
        return [s.settings for s in self._slots.values() if not s.in_flight and now >= s.next_due]

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next probe is due (0 = now), None when all are in flight."""
        waits = [s.next_due - now for s in self._slots.values() if not s.in_flight]
        return max(0.0, min(waits)) if waits else None

    def in_flight(self) -> list[str]:
        return [name for name, s in self._slots.items() if s.in_flight]

    def start(self, settings: ProbeSettings, now: float) -> None:
        """Run one probe in a worker thread; its next run is due one interval from now."""
        slot = self._slots[settings.name]
        slot.in_flight = True
        slot.next_due = now + settings.interval_s
        worker = threading.Thread(
            target=self._work, args=(settings,), name=f"probe-{settings.name}", daemon=True
        )
        worker.start()

    def tick(self, now: float) -> list[str]:
        """Start every due probe; the names started."""
        started = self.due(now)
        for settings in started:
            self.start(settings, now)
        return [s.name for s in started]

    def drain(self) -> list[ProbeResult]:
        """Every result that has arrived (possibly none); their probes may run again."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass
        out: list[ProbeResult] = []
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                break
            slot = self._slots.get(result.name)
            if slot is not None:
                slot.in_flight = False
            out.append(result)
        return out

    def close(self) -> None:
        """Close the wake-up pipe. Running workers finish on their own (their timeouts)."""
        with self._pipe_lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._read_fd, self._write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> ProbeScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self, settings: ProbeSettings) -> None:
        try:
            result = self._run(settings, self._clock)
        except Exception as exc:  # a runner must never lose a slot for good
            result = ProbeResult(
                self._clock.now(), settings.name, False, None,
                f"{settings.kind}: internal error: {type(exc).__name__}: {exc}",
            )
        self._results.put(result)
        with self._pipe_lock:
            if self._closed:
                return  # nobody listens any more
            # A full pipe already means "wake up".
            with contextlib.suppress(BlockingIOError):
                os.write(self._write_fd, b"\0")
