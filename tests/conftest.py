"""Session set-up shared by every test: compiled databases and the parsed catalog are
cached in a directory of the test session's own, not in this machine's
/var/cache/nodewarden (the tests run as root, whose default cache that is). Set when
pytest loads this file, before any test module is imported (some load the catalog at
import); subprocesses inherit it through NODEWARDEN_CACHE. Tests of the cache itself
pass their own."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration._postgres import Cluster

_OWN: str | None = None
if not os.environ.get("NODEWARDEN_CACHE"):  # the caller may choose one (or "off")
    _OWN = tempfile.mkdtemp(prefix="nodewarden-test-cache-")
    os.environ["NODEWARDEN_CACHE"] = os.path.join(_OWN, "cache")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OWN is not None:
        shutil.rmtree(_OWN, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """One real PostgreSQL cluster for the whole run, started when a test first asks
    (tests/integration/_postgres.py): the store's tests on PostgreSQL share it."""
    from tests.integration._postgres import running_postgres

    with running_postgres() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres: Cluster) -> Iterator[str]:
    """A database of the test's own, at the latest schema, dropped after it."""
    with postgres.database() as url:
        yield url
