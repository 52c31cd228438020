"""The next item's work done in a thread while the caller holds this one: scan's
prefilter of block N+1 runs while block N's candidates are confirmed and printed.

hyperscan releases the GIL while it scans (agent/detect/_hsblock.c), so on a machine of
two cores or more the scan of a block costs no wall time beside the Python that
confirms the previous one (docs/architecture.md, "Figures"). One thread per block, at
most one running; the first item's work runs in the caller's thread, so a short input
starts no thread at all. Order, results and exceptions are as a plain loop's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Job(Generic[T, R]):
    """work(item) in a thread of its own; `result()` joins it and returns or raises."""

    def __init__(self, work: Callable[[T], R], item: T) -> None:
        self._work = work
        self._item = item
        self._value: R | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nodewarden-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._work(self._item)
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc

    def result(self) -> R:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def prefetched(items: Iterable[T], work: Callable[[T], R]
               ) -> Generator[tuple[T, R], None, None]:
    """(item, work(item)) for each item in order, work(next item) running in a thread
    while the caller uses the current pair. `items` is advanced in the caller's thread."""
    source = iter(items)
    for first in source:
        current, result = first, work(first)
        break
    else:
        return
    job: _Job[T, R] | None = None
    try:
        while True:
            following = next(source, _END)
            job = None if following is _END else _Job(work, following)  # type: ignore[arg-type]
            yield current, result
            if job is None:
                return
            current, result, job = following, job.result(), None  # type: ignore[assignment]
    finally:
        if job is not None:
            job.result()  # the caller stopped early: the thread ends before we do


def in_turn(items: Iterable[T], work: Callable[[T], R]) -> Generator[tuple[T, R], None, None]:
    """`prefetched` without the thread: (item, work(item)), each in turn."""
    for item in items:
        yield item, work(item)


_END = object()
