"""Durable JSON files for safety state: atomic writes, tolerant reads.

A write is tmp file + fsync + rename + fsync of the directory, so a crash or power loss
leaves either the old file or the new one, never half of each. A write that fails (full
disk, read-only file system) raises StateError and leaves the old file in place.

A read never raises: a missing file is "no state yet"; a file that cannot be parsed is
moved aside as `NAME.corrupt-<unix time>` (so an operator can look at it) and reported in
`Loaded.problem`. What to do about a corrupt file is the caller's decision: see
agent/state/store.py (approvals, maintenance and ladders start clean; the action
history does not).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StateError(Exception):
    """Safety state could not be written; the previous state is kept."""


@dataclass(frozen=True)
class Loaded:
    """The result of reading one state file.

    `data` is the parsed JSON object (None when missing or corrupt); `problem` is a
    sentence when the file was unreadable or corrupt; `kept_as` names where a corrupt
    file was moved.
    """

    data: dict[str, Any] | None
    problem: str | None = None
    kept_as: Path | None = None


def write_json_atomic(path: Path, data: object) -> None:
    """Replace `path` with `data` as JSON, durably; StateError if it cannot be written."""
    write_text_atomic(path, (json.dumps(data, sort_keys=True, indent=1) + "\n").encode("utf-8"))


def write_text_atomic(path: Path, payload: bytes) -> None:
    """Replace `path` with `payload`, durably; StateError if it cannot be written."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        raise StateError(f"cannot write {path}: {reason} (the previous state is kept)") from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not numbers a state file may hold (a NaN expiry never ends)."""
    raise ValueError(f"{name} is not a number")


def read_json(path: Path, now: float, *, keep_corrupt: bool = False) -> Loaded:
    """Read a JSON object; a corrupt file is moved aside (left in place with
    `keep_corrupt`) and reported, never raised."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Loaded(None)
    except OSError as exc:
        return Loaded(None, f"cannot read {path}: {exc.strerror or exc}")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        data, error = None, str(exc)
    else:
        error = "" if isinstance(data, dict) else f"top level is {type(data).__name__}"
    if error and keep_corrupt:
        return Loaded(None, f"{path} is corrupt ({error[:120]})")
    if error:
        kept = path.with_name(f"{path.name}.corrupt-{int(now)}")
        try:
            path.replace(kept)
        except OSError as move_exc:
            return Loaded(
                None, f"{path} is corrupt ({error}) and could not be moved aside: {move_exc}"
            )
        return Loaded(None, f"{path} is corrupt ({error[:120]}); kept as {kept.name}", kept)
    return Loaded(data)
