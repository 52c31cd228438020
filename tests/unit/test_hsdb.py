"""Which hyperscan databases a command builds (agent/detect/hsdb.py), that the one build
validates the patterns, and that the cache is what the next start uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.detect import hsdb
from agent.detect.catalog import load_catalog
from agent.detect.dbcache import MAGIC, DatabaseCache
from agent.detect.matcher import Matcher
from agent.detect.prefilter import prefilter_pattern
from agent.detect.signature import Example, Signature
from agent.model import LogLine
from tests.unit._signatures import GOOD, REPO, builtin

NFS = b"nfs: server nas-a1 not responding, still trying"


def _entry_name(cache: DatabaseCache, mode: str) -> str:
    patterns = [prefilter_pattern(s.regex) for s in builtin().signatures]
    key = hsdb.cache_key([*patterns, *hsdb.MODES[mode].extra], hsdb.MODES[mode])
    return DatabaseCache._name(key)


def _entries(directory: Path) -> set[str]:
    """The databases' entries (the parsed catalog's, agent/detect/catcache.py, aside)."""
    if not directory.exists():
        return set()
    return {p.name for p in directory.iterdir()
            if not p.read_bytes()[len(MAGIC) + 64:].startswith(b'{"signatures"')}


@pytest.mark.parametrize(("asked", "built"), [
    ((), set()), ((hsdb.LINE,), {hsdb.LINE}), ((hsdb.BLOCK,), {hsdb.BLOCK}),
    ((hsdb.BLOCK, hsdb.LINE), {hsdb.BLOCK, hsdb.LINE}),
])
def test_only_the_databases_asked_for_are_built(tmp_path: Path, asked: tuple[str, ...],
                                                built: set[str]) -> None:
    cache = DatabaseCache(tmp_path / "cache")
    catalog, errors = load_catalog(None, databases=asked, cache=cache)
    assert errors == []
    assert set(catalog.databases) == built
    assert _entries(cache.directory) == {_entry_name(cache, mode) for mode in built}


def test_the_matcher_builds_a_missing_database_when_first_used(tmp_path: Path) -> None:
    cache = DatabaseCache(tmp_path / "cache")
    catalog, _ = load_catalog(None, databases=(hsdb.BLOCK,), cache=cache)
    matcher = Matcher(catalog, "hyperscan", cache=cache)
    assert 0 in matcher.candidates(NFS)
    assert _entries(cache.directory) == {_entry_name(cache, hsdb.BLOCK)}
    (hit,) = matcher.match(LogLine(source="kmsg", text=NFS.decode(), t=0.0))
    assert hit.subject == "nas-a1"
    assert _entries(cache.directory) == {_entry_name(cache, m) for m in (hsdb.BLOCK, hsdb.LINE)}


def _plant(cache: DatabaseCache, mode: str) -> None:
    """Store, under the real key, a database that finds only `zzplanted`: proof of use."""
    import hyperscan

    db = hsdb.compile_patterns(["zzplanted"], hsdb.MODES[mode].flags)
    patterns = [prefilter_pattern(s.regex) for s in builtin().signatures]
    key = hsdb.cache_key([*patterns, *hsdb.MODES[mode].extra], hsdb.MODES[mode])
    cache.store(key, hyperscan.dumpb(db))


def _found(cache: DatabaseCache) -> dict[int, set[int]]:
    catalog, _ = load_catalog(None, databases=(hsdb.BLOCK,), cache=cache)
    return Matcher(catalog, "hyperscan", cache=cache).candidates(b"zzplanted\n" + NFS)


def test_an_intact_entry_is_what_the_next_start_uses(tmp_path: Path) -> None:
    cache = DatabaseCache(tmp_path / "cache")
    _plant(cache, hsdb.BLOCK)
    assert set(_found(cache)) == {0}  # the planted database, not a compiled one


def test_a_changed_catalog_builds_a_new_entry(tmp_path: Path) -> None:
    cache = DatabaseCache(tmp_path / "cache")
    _plant(cache, hsdb.BLOCK)
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    (sigs / "site.toml").write_text(GOOD)
    catalog, errors = load_catalog(sigs, databases=(hsdb.BLOCK,), cache=cache)
    assert errors == [] and len(catalog) == len(builtin()) + 1
    found = Matcher(catalog, "hyperscan", cache=cache).candidates(b"zzplanted\n" + NFS)
    assert set(found) == {1}
    assert len(_entries(cache.directory)) == 2


def test_a_corrupt_entry_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    cache = DatabaseCache(tmp_path / "cache")
    _plant(cache, hsdb.BLOCK)
    entry = cache.directory / _entry_name(cache, hsdb.BLOCK)
    blob = bytearray(entry.read_bytes())
    blob[-10] ^= 0xFF
    entry.write_bytes(bytes(blob))
    assert set(_found(cache)) == {1}  # compiled again: the real catalog
    assert set(_found(cache)) == {1}  # and stored again, intact


def test_a_well_formed_entry_hyperscan_cannot_load_is_rebuilt(tmp_path: Path) -> None:
    cache = DatabaseCache(tmp_path / "cache")
    patterns = [prefilter_pattern(s.regex) for s in builtin().signatures]
    mode = hsdb.MODES[hsdb.BLOCK]
    key = hsdb.cache_key([*patterns, *mode.extra], mode)
    cache.store(key, b"not a hyperscan database")
    assert set(_found(cache)) == {1}


def test_an_entry_others_could_write_is_not_used(tmp_path: Path) -> None:
    cache = DatabaseCache(tmp_path / "cache")
    _plant(cache, hsdb.BLOCK)
    os.chmod(cache.directory / _entry_name(cache, hsdb.BLOCK), 0o666)
    assert set(_found(cache)) == {1}


def test_no_cache_still_works() -> None:
    catalog, errors = load_catalog(None, databases=(hsdb.BLOCK,), cache=None)
    assert errors == [] and set(catalog.databases) == {hsdb.BLOCK}
    assert set(Matcher(catalog, "hyperscan", cache=None).candidates(NFS)) == {0}


def _sig(sig_id: str, regex: str) -> Signature:
    return Signature(id=sig_id, problem="p", regex=regex, source="kmsg", severity="error",
                     description="d", reference="r", subject="host",
                     examples=(Example("x", "host"),), counter_examples=("y",),
                     file="site.toml")


def test_one_compile_validates_and_one_by_one_names_the_refused() -> None:
    good = [_sig("a.one", r"nasd: export \S+ vanished"), _sig("a.two", r"disk \w+ gone")]
    bad = _sig("a.bad", r"abc(?:[a-z]{900}){900}")  # hyperscan: bounded repeat too large
    kept, dbs, errors = hsdb.checked_databases([good[0], bad, good[1]], (hsdb.BLOCK,), None)
    assert kept == good and set(dbs) == {hsdb.BLOCK}
    assert [(e.file, e.key) for e in errors] == [("site.toml", "signature[a.bad].regex")]
    assert "hyperscan cannot compile it" in errors[0].reason
    assert hsdb.checked_databases(good, (), None)[1:] == ({}, [])


@pytest.mark.parametrize(("engine", "modes"), [("hyperscan", {hsdb.BLOCK}),
                                               ("portable", set())])
def test_scan_builds_only_the_block_database(tmp_path: Path, engine: str,
                                             modes: set[str]) -> None:
    cache = DatabaseCache(tmp_path / "cache")
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    env = dict(os.environ, NODEWARDEN_CACHE=str(cache.directory))
    out = subprocess.run([sys.executable, "-m", "agent", "scan", "-", "--signatures-dir",
                          str(sigs), "--engine", engine], input=NFS + b"\n", env=env,
                         capture_output=True, cwd=REPO, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert b"nas-a1" in out.stdout
    assert _entries(cache.directory) == {_entry_name(cache, m) for m in modes}


def test_the_cache_can_be_turned_off(tmp_path: Path) -> None:
    env = dict(os.environ, NODEWARDEN_CACHE="off", HOME=str(tmp_path), XDG_CACHE_HOME="")
    out = subprocess.run([sys.executable, "-m", "agent", "scan", "-", "--signatures-dir",
                          str(tmp_path)], input=NFS + b"\n", env=env, capture_output=True,
                         cwd=REPO, timeout=120, check=False)
    assert out.returncode == 0 and b"nas-a1" in out.stdout
    assert list(tmp_path.iterdir()) == []
