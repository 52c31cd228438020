"""The hyperscan databases of the catalog's prefilter patterns: which ones, built once.

Two databases serve two callers, and each is built only when a command uses it:

* `line` (HS_FLAG_SINGLEMATCH): the daemon's per-line `Matcher.match` (run, simulate);
* `block` (all matches, plus the kmsg escape `\\x`): `scan`'s block prefilter.

The loader validates the patterns with ONE compile of the database the command asked
for (agent/detect/loader.py); only when that fails are the patterns compiled one by one,
to name the signatures hyperscan refuses. A built database is serialized into the
on-disk cache (agent/detect/dbcache.py) under a key of everything it is built from: the
patterns, the mode, the flags, the hyperscan version and CODE_VERSION, so the next start
loads it in 0.1 ms instead of compiling for 0.3 s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.detect.dbcache import DatabaseCache
from agent.detect.prefilter import pattern_of
from agent.detect.signature import Signature, config_key
from agent.schema import ConfigError

LINE = "line"
BLOCK = "block"
#: how a raw kmsg record writes an unprintable byte (`\\xNN`): the parsed text is
#: unescaped, so in a block of raw lines one holding it is a candidate for every signature
ESCAPE = b"\\x"
#: bump when the way a database is built from its patterns changes (ids, flags, extras)
CODE_VERSION = 1


@dataclass(frozen=True)
class Mode:
    """How one kind of database is built: its flags and the patterns after the
    signatures' own (their ids follow the signatures' indices)."""

    name: str
    flags: tuple[str, ...]
    extra: tuple[str, ...] = ()


MODES = {
    # PREFILTER: hyperscan may approximate, the signature confirms
    LINE: Mode(LINE, ("HS_FLAG_SINGLEMATCH", "HS_FLAG_PREFILTER")),
    BLOCK: Mode(BLOCK, ("HS_FLAG_PREFILTER",), (re.escape(ESCAPE.decode()),)),
}


def hyperscan_available() -> bool:
    try:
        import hyperscan  # noqa: F401
    except ImportError:
        return False
    return True


def compile_patterns(patterns: Sequence[str], flags: Sequence[str]) -> Any:
    """One hyperscan database of `patterns` (raises hyperscan.error, ImportError)."""
    import hyperscan

    value = 0
    for name in flags:
        value |= getattr(hyperscan, name)
    db = hyperscan.Database()
    db.compile(expressions=[p.encode() for p in patterns], ids=list(range(len(patterns))),
               elements=len(patterns), flags=[value] * len(patterns))
    return db


def cache_key(patterns: Sequence[str], mode: Mode) -> bytes:
    """Everything a database is built from, as bytes: a different key, a new build."""
    import hyperscan

    return json.dumps({
        "what": "hyperscan prefilter database", "code": CODE_VERSION,
        "hyperscan": getattr(hyperscan, "__version__", "?"), "mode": mode.name,
        "flags": mode.flags,
        "patterns": list(patterns),
    }, sort_keys=True).encode()


def build(patterns: Sequence[str], mode_name: str, cache: DatabaseCache | None) -> Any:
    """The `mode_name` database of the signatures' prefilter `patterns`: from the cache
    when an intact entry is there, else compiled (and stored). Raises hyperscan.error."""
    import hyperscan

    mode = MODES[mode_name]
    everything = [*patterns, *mode.extra]
    key = cache_key(everything, mode) if cache is not None else b""
    if cache is not None:
        blob = cache.load(key)
        if blob is not None:
            try:
                db = hyperscan.loadb(blob, hyperscan.HS_MODE_BLOCK)
                # a deserialized database has no scratch space yet (compile makes one)
                db.scratch = hyperscan.Scratch(db)
                return db
            except hyperscan.error:
                pass  # another platform or library build: compile it again
    db = compile_patterns(everything, mode.flags)
    if cache is not None:
        cache.store(key, hyperscan.dumpb(db))
    return db


def _refused(sigs: Sequence[Signature], flags: Sequence[str]) -> list[ConfigError]:
    """Compile each signature's pattern alone: the errors name the ones refused."""
    import hyperscan

    errors: list[ConfigError] = []
    for sig in sigs:
        try:
            compile_patterns([pattern_of(sig)], flags)
        except hyperscan.error as exc:
            errors.append(ConfigError(sig.file, config_key(sig.id, "regex"),
                                      f"hyperscan cannot compile it: {exc}"))
    return errors


class _BuildFailed(Exception):
    def __init__(self, mode: str, reason: str) -> None:
        super().__init__(mode, reason)
        self.mode = mode
        self.reason = reason


def _build_all(sigs: Sequence[Signature], modes: Sequence[str],
               cache: DatabaseCache | None) -> dict[str, Any]:
    import hyperscan

    patterns = [pattern_of(s) for s in sigs]
    out: dict[str, Any] = {}
    for mode in modes:
        try:
            out[mode] = build(patterns, mode, cache)
        except hyperscan.error as exc:
            raise _BuildFailed(mode, str(exc)) from exc
    return out


def checked_databases(
    sigs: Sequence[Signature], modes: Sequence[str], cache: DatabaseCache | None
) -> tuple[list[Signature], dict[str, Any], list[ConfigError]]:
    """(the signatures hyperscan accepts, their databases by mode, errors for the rest).

    The first mode's build is the validation; nothing is compiled when no mode is asked
    for, hyperscan is missing or there are no signatures."""
    if not modes or not sigs or not hyperscan_available():
        return list(sigs), {}, []
    try:
        return list(sigs), _build_all(sigs, modes, cache), []
    except _BuildFailed as failed:
        errors = _refused(sigs, MODES[failed.mode].flags)
    refused = {e.key for e in errors}
    kept = [s for s in sigs if config_key(s.id, "regex") not in refused]
    if not kept:
        return [], {}, errors
    try:
        return kept, _build_all(kept, modes, cache), errors
    except _BuildFailed as failed:  # each compiles alone, not all together
        return [], {}, [*errors, ConfigError("-", "signature", "hyperscan cannot compile "
                                             f"the catalog: {failed.reason}")]
