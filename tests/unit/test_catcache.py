"""The parsed catalog's cache (agent/detect/catcache.py): a second start with the same
files and code takes the signatures from it and gets the same catalog; an entry that is
corrupt, malformed, foreign, writable by others or symlinked is not used and the catalog
is read in full; a catalog with an error is never kept, so it is refused every time.
The tests run as root, like the agent, so ownership checks are real."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.detect import catcache, loader
from agent.detect.catalog import load_catalog
from agent.detect.dbcache import DatabaseCache
from agent.detect.prefilter import prefilter_pattern
from agent.detect.signature import Signature
from agent.schema import ConfigError
from tests.unit._signatures import GOOD, REPO

NOBODY = 65534


@pytest.fixture
def cache(tmp_path: Path) -> DatabaseCache:
    return DatabaseCache(tmp_path / "cache")


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sigs"
    d.mkdir()
    (d / "local.toml").write_text(GOOD)
    return d


def _entries(cache: DatabaseCache) -> list[Path]:
    return sorted(cache.directory.iterdir()) if cache.directory.exists() else []


def _catalog_entry(cache: DatabaseCache, user_dir: Path) -> Path:
    """The catalog's entry (the only one: no hyperscan database is asked for)."""
    load_catalog(user_dir, databases=(), cache=cache)
    (entry,) = _entries(cache)
    return entry


def _no_full_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every full read of a file (a cache hit makes none)."""
    reads: list[str] = []
    real = loader.parse_signature_file

    def counted(data: bytes, file: str, seen: dict[str, str] | None = None
                ) -> tuple[list[Signature], list[ConfigError]]:
        reads.append(file)
        return real(data, file, seen)

    monkeypatch.setattr(loader, "parse_signature_file", counted)
    return reads


def test_a_second_load_takes_the_same_catalog_from_the_cache(
        cache: DatabaseCache, user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, errors = load_catalog(user_dir, databases=(), cache=cache)
    assert errors == [] and len(_entries(cache)) == 1
    reads = _no_full_read(monkeypatch)
    second, errors = load_catalog(user_dir, databases=(), cache=cache)
    assert errors == [] and reads == []
    assert second.signatures == first.signatures
    for a, b in zip(first.signatures, second.signatures, strict=True):
        assert b.compiled is not None and b.compiled.pattern == a.regex
        assert (b.compiled_program is None) == (a.compiled_program is None)
        assert b.prefilter == prefilter_pattern(a.regex)
        assert b.subject_is_group == a.subject_is_group
        assert [b.extract(ex.line) for ex in b.examples] == [ex.subject for ex in b.examples]


def test_signatures_from_the_cache_compile_on_first_use(
        cache: DatabaseCache, user_dir: Path) -> None:
    """The daemon carries RE2 programs only for the signatures its lines reach: from the
    cache, a signature knows its group names without compiling, and compiles when it
    first matches, to the same groups."""
    first, _ = load_catalog(user_dir, databases=(), cache=cache)
    second, _ = load_catalog(user_dir, databases=(), cache=cache)
    assert all(s.compiled is not None and not s.compiled.compiled for s in second.signatures)
    for a, b in zip(first.signatures, second.signatures, strict=True):
        assert b.compiled is not None and a.compiled is not None
        assert b.compiled.group_names == a.compiled.group_names
        assert b.subject_is_group == a.subject_is_group
    used = second.signatures[0]
    assert used.compiled is not None
    assert [used.extract(ex.line) for ex in used.examples] == [
        ex.subject for ex in used.examples]
    assert used.compiled.compiled
    assert sum(s.compiled.compiled for s in second.signatures if s.compiled) == 1


def test_a_changed_file_is_read_again(cache: DatabaseCache, user_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    load_catalog(user_dir, databases=(), cache=cache)
    (user_dir / "local.toml").write_text(GOOD.replace("[[signature]]", "[[signatur]]", 1))
    reads = _no_full_read(monkeypatch)
    _catalog, errors = load_catalog(user_dir, databases=(), cache=cache)
    assert reads and errors


def test_a_bad_catalog_is_never_kept_and_refused_every_time(
        cache: DatabaseCache, user_dir: Path) -> None:
    (user_dir / "bad.toml").write_text(GOOD.replace('id = "', 'id = "bad-', 1)
                                       .replace("severity = \"", "severity = \"x", 1))
    for _ in range(2):
        _catalog, errors = load_catalog(user_dir, databases=(), cache=cache)
        assert any("severity" in e.key for e in errors)
    assert _entries(cache) == []


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"signatures": [{"id": 1}]}',
                                     b'{"signatures": 7}', b'{"signatures": [[]]}'])
def test_a_malformed_entry_is_read_in_full(cache: DatabaseCache, user_dir: Path,
                                          payload: bytes,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = load_catalog(user_dir, databases=(), cache=cache)
    files = [*loader._builtin_files(), (str(user_dir / "local.toml"),
                                        (user_dir / "local.toml").read_bytes())]
    key = catcache.catalog_key(files, catcache.code_digest() or "")
    cache.store(key, payload)
    reads = _no_full_read(monkeypatch)
    again, errors = load_catalog(user_dir, databases=(), cache=cache)
    assert reads and errors == [] and again.signatures == first.signatures


def test_a_corrupt_entry_is_read_in_full_and_rebuilt(
        cache: DatabaseCache, user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _catalog_entry(cache, user_dir)
    blob = bytearray(entry.read_bytes())
    blob[-5] ^= 0x20
    entry.write_bytes(bytes(blob))
    reads = _no_full_read(monkeypatch)
    load_catalog(user_dir, databases=(), cache=cache)
    assert reads and entry.read_bytes() != bytes(blob)


@pytest.mark.parametrize("spoil", ["group-writable", "foreign", "symlink"])
def test_an_entry_others_could_write_is_not_used(
        cache: DatabaseCache, user_dir: Path, tmp_path: Path, spoil: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _catalog_entry(cache, user_dir)
    if spoil == "group-writable":
        entry.chmod(0o620)
    elif spoil == "foreign":
        os.chown(entry, NOBODY, NOBODY)
    else:
        elsewhere = tmp_path / "planted"
        shutil.move(entry, elsewhere)
        entry.symlink_to(elsewhere)
    reads = _no_full_read(monkeypatch)
    _catalog, errors = load_catalog(user_dir, databases=(), cache=cache)
    assert reads and errors == []


def test_without_a_cache_every_load_reads_in_full(user_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _no_full_read(monkeypatch)
    load_catalog(user_dir, databases=(), cache=None)
    once = len(reads)
    load_catalog(user_dir, databases=(), cache=None)
    assert once > 0 and len(reads) == 2 * once


def test_the_code_digest_follows_the_code(tmp_path: Path) -> None:
    root = tmp_path / "agent"
    shutil.copytree(REPO / "agent" / "detect", root / "detect")
    shutil.copytree(REPO / "agent" / "sources", root / "sources")
    for name in ("schema.py", "model.py"):
        shutil.copy(REPO / "agent" / name, root / name)
    before = catcache.code_digest(root)
    assert before == catcache.code_digest()
    with (root / "sources" / "lineformat.py").open("a") as f:
        f.write("\n# changed\n")
    assert catcache.code_digest(root) not in (None, before)
    (root / "model.py").unlink()
    assert catcache.code_digest(root) is None
