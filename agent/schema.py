"""The configuration's primitives: errors, the TOML reader and the typed `Section`.

Every settings parser (`agent/sources/settings.py`, `agent/detect/rules.py`,
`agent/policy/ladder.py`, `agent/guards/settings.py`, `remediations/_settings.py`) reads
its own tables through a Section; `agent/config.py` assembles them. This module imports
nothing of the agent's, so no parser has to import the assembler back.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

#: what the agent does with an allowed action (docs/configuration.md, agent.mode)
MODES = ("observe", "dry-run", "enforce")

T = TypeVar("T")


@dataclass(frozen=True)
class ConfigError:
    """One problem in the configuration: where (file, dotted key) and why."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


class ConfigInvalid(Exception):
    """The configuration was refused whole; `errors` says every reason."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


_MISSING: Any = object()


class Section:
    """A typed reader over one TOML table that records errors instead of raising.

    Each getter returns the default when the key is absent or wrong (after recording an
    error), so one pass reports every error in the file. `finish()` reports unknown keys:
    a typo must not silently fall back to a default.
    """

    def __init__(
        self, raw: Mapping[str, Any], file: str, path: str, errors: list[ConfigError],
        asked: set[str] | None = None,
    ) -> None:
        self.raw = raw
        self.file = file
        self.path = path
        self.errors = errors
        self._seen: set[str] = set()
        #: every dotted key any parser asked for (docs/configuration.md is checked against it)
        self.asked = asked if asked is not None else set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> None:
        self.errors.append(ConfigError(self.file, self.key(name), reason))

    def has(self, name: str) -> bool:
        return name in self.raw

    def refuse(self, name: str, reason: str) -> None:
        """A key that is known but may not be set: one error (not also "unknown key")."""
        self._seen.add(name)
        self.asked.add(self.key(name))
        self.error(name, reason)

    def _get(self, name: str, default: T, check: Callable[[Any], bool], want: str) -> T:
        self._seen.add(name)
        self.asked.add(self.key(name))
        if name not in self.raw:
            if default is _MISSING:
                self.error(name, "is required")
            return default
        value = self.raw[name]
        if not check(value):
            self.error(name, f"must be {want}, not {type(value).__name__} {value!r}"[:200])
            return default
        return value  # type: ignore[no-any-return]

    def text(self, name: str, default: str = _MISSING) -> str:
        return self._get(name, default, lambda v: isinstance(v, str), "a string")

    def opt_str(self, name: str) -> str | None:
        return self._get(name, None, lambda v: isinstance(v, str), "a string")

    def flag(self, name: str, default: bool = _MISSING) -> bool:
        return self._get(name, default, lambda v: isinstance(v, bool), "true or false")

    def integer(
        self, name: str, default: int = _MISSING, *, minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:  # TOML integers are always finite
        value = self._get(
            name, default, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"
        )
        out: int = self._bounded(name, value, default, minimum, maximum)
        return out

    def number(
        self, name: str, default: float = _MISSING, *, minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = self._get(
            name, default,
            lambda v: isinstance(v, int | float) and not isinstance(v, bool)
            and _finite(v), "a finite number",
        )
        if value is _MISSING:
            return default
        out: float = self._bounded(name, float(value), default, minimum, maximum)
        return out

    def _bounded(self, name: str, value: Any, default: Any, lo: Any, hi: Any) -> Any:
        if value is _MISSING or value is None or name not in self.raw:
            return value  # defaults are not checked against the bounds
        if lo is not None and value < lo:
            self.error(name, f"must be at least {lo}, not {value}")
            return default
        if hi is not None and value > hi:
            self.error(name, f"must be at most {hi}, not {value}")
            return default
        return value

    def choice(self, name: str, choices: Sequence[str], default: str = _MISSING) -> str:
        value = self.text(name, default)
        if value is not _MISSING and value not in choices:
            self.error(name, f"must be one of {', '.join(choices)}, not {value!r}")
            return default
        return value

    def str_list(self, name: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        value = self._get(
            name, list(default),
            lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
            "a list of strings",
        )
        return tuple(value)

    def table(self, name: str) -> Section:
        """A sub-table (absent = empty)."""
        value: dict[str, Any] = self._get(name, {}, lambda v: isinstance(v, dict), "a table")
        return Section(value, self.file, self.key(name), self.errors, self.asked)

    def tables(self, name: str) -> Iterator[tuple[str, Section]]:
        """Each named sub-table of a table, e.g. `[probes.imap]` → ("imap", Section)."""
        outer = self.table(name)
        for sub in outer.raw:
            yield sub, outer.table(sub)
        outer.finish()

    def table_list(self, name: str) -> list[Section]:
        """An array of tables (`rungs = [{...}, {...}]`): one Section per element."""
        value: list[Any] = self._get(
            name, [], lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
            "a list of tables",
        )
        return [
            Section(v, self.file, f"{self.key(name)}[{i}]", self.errors, self.asked)
            for i, v in enumerate(value)
        ]

    def finish(self) -> None:
        for name in self.raw:
            if name not in self._seen:
                self.error(name, "unknown key (misspelt? see docs/configuration.md)")


#: deeper than any real file (agent.toml's deepest key is policy.P.rungs[i].params.K);
#: a deeper document is refused before anything reads it (no parser recursion)
MAX_DEPTH = 12


def _finite(value: float) -> bool:
    """A finite float, or an integer a float can hold (TOML allows 400-digit ones)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def tree_errors(raw: object, file: str) -> list[ConfigError]:
    """Non-finite numbers anywhere (NaN and infinity are typos too) and nesting deeper
    than MAX_DEPTH, with the dotted key where they are."""
    errors: list[ConfigError] = []
    stack: list[tuple[object, str, int]] = [(raw, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > MAX_DEPTH:
            errors.append(ConfigError(file, key or "-", f"nested deeper than {MAX_DEPTH} "
                                      "levels: not a configuration file"))
            continue
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(ConfigError(file, key or "-", f"must be a finite number, not "
                                      f"{value}"))
        elif isinstance(value, dict):
            stack += [(v, f"{key}.{k}" if key else str(k), depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value)]
    return sorted(errors, key=lambda e: e.key)


def parse_toml(data: bytes, file: str) -> tuple[dict[str, Any] | None, list[ConfigError]]:
    """TOML bytes to a table, or None and the reason (never a traceback): not UTF-8,
    not TOML, nested too deep, non-finite numbers."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, [ConfigError(file, "-", f"not UTF-8 text: {exc}")]
    except tomllib.TOMLDecodeError as exc:
        return None, [ConfigError(file, "-", f"not valid TOML: {exc}")]
    except RecursionError:  # the parser recurses per level: a nesting bomb ends here
        return None, [ConfigError(file, "-", f"nested deeper than {MAX_DEPTH} levels: not "
                                  "a configuration file")]
    errors = tree_errors(raw, file)
    return (None if errors else raw), errors


def role_tables(directory: Path, role: str) -> list[tuple[str, dict[str, Any]]]:
    """(file name, parsed TOML) of the shipped defaults of `role` in `directory`:
    `generic.toml` applies to every host, `storage.toml` / `mail.toml` add to it (and may
    replace one of its tables) for `agent.role = "storage" | "mail"`."""
    files = [directory / "generic.toml"]
    if role != "generic" and (directory / f"{role}.toml").exists():
        files.append(directory / f"{role}.toml")
    return [(str(p), tomllib.loads(p.read_text("utf-8"))) for p in files]
