"""The on-disk database cache (agent/detect/dbcache.py): used only when nobody else could
have written it, rebuilt when changed or corrupt, skipped silently when it cannot be
written. The tests run as root, like the agent, so ownership checks are real."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.detect.dbcache import (
    MAX_ENTRIES,
    ROOT_CACHE_DIR,
    DatabaseCache,
    default_cache,
    pack,
    unpack,
)

KEY = b"patterns v1"
PAYLOAD = b"compiled database bytes"
NOBODY = 65534


@pytest.fixture
def cache(tmp_path: Path) -> DatabaseCache:
    return DatabaseCache(tmp_path / "cache")


def _entry(cache: DatabaseCache) -> Path:
    (entry,) = [p for p in cache.directory.iterdir() if p.name.endswith(".db")]
    return entry


def test_round_trip_in_a_private_directory(cache: DatabaseCache) -> None:
    assert cache.load(KEY) is None
    cache.store(KEY, PAYLOAD)
    assert cache.load(KEY) == PAYLOAD
    assert cache.directory.stat().st_mode & 0o777 == 0o700
    assert _entry(cache).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in cache.directory.iterdir() if p.name.startswith(".")] == []


def test_another_key_is_a_miss(cache: DatabaseCache) -> None:
    cache.store(KEY, PAYLOAD)
    assert cache.load(b"patterns v2") is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_a_corrupt_entry_is_not_trusted_and_is_rebuilt(cache: DatabaseCache,
                                                       damage: str) -> None:
    cache.store(KEY, PAYLOAD)
    entry = _entry(cache)
    blob = entry.read_bytes()
    entry.write_bytes({"flip": blob[:-1] + bytes([blob[-1] ^ 1]), "truncate": blob[:-3],
                       "empty": b"", "garbage": b"\x00" * 200}[damage])
    assert cache.load(KEY) is None
    cache.store(KEY, PAYLOAD)
    assert cache.load(KEY) == PAYLOAD


def test_an_entry_for_another_key_under_this_name_is_refused() -> None:
    assert unpack(pack(b"other key", PAYLOAD), KEY) is None
    assert unpack(pack(KEY, PAYLOAD), KEY) == PAYLOAD


@pytest.mark.parametrize("mode", [0o622, 0o606, 0o666])
def test_an_entry_others_can_write_is_not_used(cache: DatabaseCache, mode: int,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cache.store(KEY, PAYLOAD)
    _entry(cache).chmod(mode)
    with caplog.at_level(logging.WARNING):
        assert cache.load(KEY) is None
    assert "not using the database cache" in caplog.text


def test_an_entry_of_another_owner_is_not_used(cache: DatabaseCache) -> None:
    cache.store(KEY, PAYLOAD)
    os.chown(_entry(cache), NOBODY, NOBODY)
    assert cache.load(KEY) is None


def test_a_hard_linked_entry_is_not_used(cache: DatabaseCache, tmp_path: Path) -> None:
    cache.store(KEY, PAYLOAD)
    os.link(_entry(cache), tmp_path / "elsewhere")
    assert cache.load(KEY) is None


def test_a_symlinked_entry_is_not_followed_and_is_replaced(cache: DatabaseCache,
                                                           tmp_path: Path) -> None:
    cache.store(KEY, PAYLOAD)
    entry = _entry(cache)
    target = tmp_path / "planted"
    target.write_bytes(entry.read_bytes())
    entry.unlink()
    entry.symlink_to(target)
    assert cache.load(KEY) is None  # O_NOFOLLOW: the link is never read through
    cache.store(KEY, PAYLOAD)
    assert not entry.is_symlink() and cache.load(KEY) == PAYLOAD
    target.write_bytes(b"changed")  # the store wrote the cache, not through the link
    assert cache.load(KEY) == PAYLOAD


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_directory_others_can_write_is_neither_read_nor_written(
        cache: DatabaseCache, mode: int) -> None:
    cache.store(KEY, PAYLOAD)
    cache.directory.chmod(mode)
    assert cache.load(KEY) is None
    _entry(cache).unlink()
    cache.store(KEY, PAYLOAD)
    assert list(cache.directory.iterdir()) == []


def test_a_directory_of_another_owner_is_not_used(cache: DatabaseCache) -> None:
    cache.store(KEY, PAYLOAD)
    os.chown(cache.directory, NOBODY, NOBODY)
    assert cache.load(KEY) is None


def test_a_symlinked_directory_is_not_used(tmp_path: Path) -> None:
    real = DatabaseCache(tmp_path / "real")
    real.store(KEY, PAYLOAD)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert DatabaseCache(tmp_path / "link").load(KEY) is None
    # nor a directory under a symlinked ancestor
    assert DatabaseCache(tmp_path / "link2" / "cache").load(KEY) is None
    (tmp_path / "link2").symlink_to(tmp_path)
    (tmp_path / "cache").mkdir(mode=0o700)
    DatabaseCache(tmp_path / "cache").store(KEY, PAYLOAD)
    assert DatabaseCache(tmp_path / "link2" / "cache").load(KEY) is None


def test_an_ancestor_others_can_write_makes_it_unsafe_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    cache = DatabaseCache(shared / "cache")
    shared.chmod(0o777)
    cache.store(KEY, PAYLOAD)
    assert not cache.directory.exists()  # nothing is made under a directory others own
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot rename our entries
    cache.store(KEY, PAYLOAD)
    assert cache.load(KEY) == PAYLOAD


def test_an_unwritable_cache_is_skipped_silently(caplog: pytest.LogCaptureFixture) -> None:
    # /proc: root-owned, not writable by others (safe), and nothing can be made there
    cache = DatabaseCache(Path("/proc/nodewarden-cache-test"))
    with caplog.at_level(logging.WARNING):
        cache.store(KEY, PAYLOAD)
        assert cache.load(KEY) is None
    assert caplog.text == ""


def test_old_entries_are_pruned(cache: DatabaseCache) -> None:
    for i in range(MAX_ENTRIES + 5):
        cache.store(b"key %d" % i, PAYLOAD)
    assert len(list(cache.directory.iterdir())) == MAX_ENTRIES
    assert cache.load(b"key %d" % (MAX_ENTRIES + 4)) == PAYLOAD


def test_where_the_cache_is() -> None:
    assert default_cache({"NODEWARDEN_CACHE": "off"}, euid=0) is None
    assert default_cache({"NODEWARDEN_CACHE": "OFF"}, euid=1000) is None
    assert default_cache({"NODEWARDEN_CACHE": "relative/dir"}, euid=0) is None
    assert default_cache({"NODEWARDEN_CACHE": "/srv/c"}, euid=0) == DatabaseCache(Path("/srv/c"))
    assert default_cache({}, euid=0) == DatabaseCache(ROOT_CACHE_DIR)
    assert default_cache({"XDG_CACHE_HOME": "/home/u/.xdg"}, euid=1000) == DatabaseCache(
        Path("/home/u/.xdg/nodewarden"))
    assert default_cache({}, euid=1000) == DatabaseCache(Path.home() / ".cache/nodewarden")
