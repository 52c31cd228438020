"""The parsed signature catalog, kept on disk under the digest of its files and its code.

Reading the catalog costs each `scan`, `check` and daemon start ~0.15-0.2 s: TOML, the
regexes parsed, checked and their literals found, the prefilter patterns, every
example run. A catalog read without any error is stored as JSON in the database cache
(agent/detect/dbcache.py: the same owner, mode and O_NOFOLLOW checks, digests, atomic
writes) under a key of everything that reading depends on: each file's name and the
digest of its bytes, the digest of the code that parses and checks it (agent/detect,
agent/sources, agent/schema.py, agent/model.py), Python's version and RE2's build. A
start with the same files and the same code takes the signatures from the entry (their
regexes are compiled again: an entry is data, never code). A missing, changed, corrupt,
foreign or malformed entry is ignored and the catalog read in full; a catalog with an
error is never stored, so a bad one is refused, with its reasons, by the full reading
every time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from importlib.machinery import PathFinder
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from agent.detect.dbcache import DatabaseCache, digest
from agent.detect.linear import LinearRegex
from agent.detect.prefilter import pattern_of
from agent.detect.signature import Example, Signature

#: bump when what is stored changes
FORMAT = 2  # 2: the regexes' group names, so they compile on first use
_AGENT = Path(__file__).resolve().parents[1]
#: the code a catalog's reading depends on (folders: every module in them)
CODE = ("detect", "sources", "schema.py", "model.py")
_FIELDS = ("id", "problem", "regex", "source", "severity", "description", "reference",
           "subject", "counter_examples", "recovery", "clears", "file", "literals",
           "program", "prefilter")


def code_digest(root: Path = _AGENT) -> str | None:
    """The digest of the catalog code's sources; None when they cannot be read (then
    nothing is cached)."""
    h = digest()
    try:
        for part in CODE:
            path = root / part
            files = sorted(path.glob("*.py")) if path.is_dir() else [path]
            for f in files:
                h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    except OSError:
        return None
    return h.hexdigest()


def catalog_key(files: Sequence[tuple[str, bytes]], code: str) -> bytes:
    """Everything a catalog's reading depends on, as bytes."""
    return json.dumps({
        "what": "signature catalog", "format": FORMAT, "code": code,
        "python": list(sys.version_info[:3]), "re2": re2_build(),
        "files": [[name, digest(data).hexdigest()] for name, data in files],
    }, sort_keys=True).encode()


def re2_build() -> list[object]:
    """RE2's extension file, its size and time, found without importing it (the daemon
    loads RE2 only when a line needs confirming: agent/detect/linear.py)."""
    try:
        package = find_spec("re2")
        where = package.submodule_search_locations if package else None
        spec = PathFinder.find_spec("re2._re2", list(where)) if where else None
        origin = spec.origin if spec else None
        if origin is None:
            return ["?"]
        st = Path(origin).stat()
    except (OSError, ImportError, ValueError):
        return ["?"]
    return [origin, st.st_size, st.st_mtime_ns]


def _record(sig: Signature) -> dict[str, Any]:
    out = {name: getattr(sig, name) for name in _FIELDS}
    out["prefilter"] = pattern_of(sig)
    out["examples"] = [[ex.line, ex.subject] for ex in sig.examples]
    out["groups"] = [sorted(sig.compiled.group_names) if sig.compiled else None,
                     sorted(sig.compiled_program.group_names) if sig.compiled_program else None]
    return out


def _signature(rec: dict[str, Any]) -> Signature:
    """A signature from its record; ValueError, KeyError or TypeError when it is not one."""
    fields = {name: rec[name] for name in _FIELDS}
    for name in ("counter_examples", "literals"):
        fields[name] = tuple(fields[name])
    if not all(isinstance(v, str) for v in (*fields["counter_examples"], *fields["literals"])):
        raise TypeError("not a list of strings")
    examples = tuple(Example(line, subject) for line, subject in rec["examples"])
    program = fields["program"]
    groups, program_groups = rec["groups"]
    return Signature(**fields, examples=examples,
                     compiled=LinearRegex(fields["regex"], lazy=_names(groups)),
                     compiled_program=None if program is None
                     else LinearRegex(program, lazy=_names(program_groups)))


def _names(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("group names: not a list of strings")
    return frozenset(value)


def load(cache: DatabaseCache, key: bytes) -> list[Signature] | None:
    """The signatures stored under `key`, or None (missing, unsafe, corrupt, malformed)."""
    blob = cache.load(key)
    if blob is None:
        return None
    try:
        records = json.loads(blob)["signatures"]
        return [_signature(rec) for rec in records]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def store(cache: DatabaseCache, key: bytes, sigs: Sequence[Signature]) -> None:
    cache.store(key, json.dumps({"signatures": [_record(s) for s in sigs]}).encode())
