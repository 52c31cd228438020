"""Wait-until for the real-part helpers: tenacity polls a condition with a deadline (the
parts have no change notification to wait on: a port that starts listening, a state in
HAProxy's runtime API, processes that have exited)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_delay,
    stop_any,
    wait_fixed,
)
from tenacity.stop import stop_base

T = TypeVar("T")


class stop_when(stop_base):  # noqa: N801 (named like tenacity's own stop conditions)
    """A tenacity stop condition from a plain predicate (the process exited)."""

    def __init__(self, done: Callable[[], bool]) -> None:
        self.done = done

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.done()


def poll(look: Callable[[], T | None], timeout_s: float, interval_s: float = 0.05,
         give_up: Callable[[], bool] = lambda: False) -> T | None:
    """`look()` every `interval_s` until it returns something (returned), `give_up()`
    says so or `timeout_s` passes (None)."""
    retrying = Retrying(
        stop=stop_any(stop_after_delay(timeout_s), stop_when(give_up)),
        wait=wait_fixed(interval_s), retry=retry_if_result(lambda found: found is None),
        retry_error_callback=lambda _state: None)
    found: T | None = retrying(look)
    return found
