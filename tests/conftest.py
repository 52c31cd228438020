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

import pytest

_OWN: str | None = None
if not os.environ.get("NODEWARDEN_CACHE"):  # the caller may choose one (or "off")
    _OWN = tempfile.mkdtemp(prefix="nodewarden-test-cache-")
    os.environ["NODEWARDEN_CACHE"] = os.path.join(_OWN, "cache")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OWN is not None:
        shutil.rmtree(_OWN, ignore_errors=True)
