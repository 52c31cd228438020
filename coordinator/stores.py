"""The store's interface and the backend a `[store] url` names.

Both backends run coordinator/store.py's Tx: SqliteStore (`sqlite:///PATH`) and
PostgresStore (`postgresql://…` or `postgres://…`, coordinator/pgstore.py). This module
sits above both, so neither imports the other, and psycopg is imported only when a
PostgreSQL URL is opened.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from coordinator.store import SqliteStore, StoreError, Tx

T = TypeVar("T")

#: the URL prefixes of the PostgreSQL store (libpq reads both)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Store(Protocol):
    """What every backend offers: one write transaction per `run`, all of it or none."""

    @property
    def schema_version(self) -> int: ...
    def run(self, work: Callable[[Tx], T]) -> T: ...
    def close(self) -> None: ...


def open_store(url: str) -> Store:
    """The store a `[store] url` names; StoreError when it cannot be opened."""
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url[len("sqlite://"):]))
    if url.startswith(POSTGRES_SCHEMES):
        from coordinator.pgstore import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"{url.split(':', 1)[0]}: not a store this coordinator knows "
                     "(sqlite:///PATH, postgresql://…)")
