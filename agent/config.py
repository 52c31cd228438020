"""One configuration path: `load_config()` is used by `run`, `check` and SIGHUP alike.

The file is TOML (default `/etc/nodewarden/agent.toml`, overridden by `--config` or
`NODEWARDEN_CONFIG`). Every key has a built-in default, so no file is needed. Errors carry
file, key and reason; a configuration with any error is refused whole (ConfigInvalid).
Every key is documented in docs/configuration.md (a test checks the two agree).
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.actions_settings import ActionSettings, parse_actions
from agent.detect.rules import Rule, parse_rules
from agent.guards.settings import GuardSettings, parse_guards
from agent.policy.ladder import Ladder, parse_policy

DEFAULT_CONFIG_PATH = Path("/etc/nodewarden/agent.toml")
DEFAULT_SIGNATURES_DIR = Path("/etc/nodewarden/signatures.d")
CONFIG_ENV = "NODEWARDEN_CONFIG"

MODES = ("observe", "dry-run", "enforce")
ROLES = ("storage", "mail", "generic")
PROBE_KINDS = ("imap", "pop3", "smtp", "http", "tcp")
TLS_MODES = ("none", "tls", "starttls")

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
            and math.isfinite(v), "a finite number",
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


def _builtin(parse: Callable[[Section, str], T], role: str) -> T:
    """The shipped rules or ladders of `role` alone (Config() without a file)."""
    errors: list[ConfigError] = []
    parsed = parse(Section({}, "<built-in defaults>", "", errors), role)
    if errors:
        raise ConfigInvalid(errors)
    return parsed


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class AgentSettings:
    mode: str = "dry-run"
    role: str = "generic"
    hostname: str = field(default_factory=socket.gethostname)
    state_dir: Path = Path("/var/lib/nodewarden")
    signatures_dir: Path = DEFAULT_SIGNATURES_DIR
    sample_interval_s: float = 1.0


@dataclass(frozen=True)
class KmsgSettings:
    enabled: bool = True
    path: Path = Path("/dev/kmsg")


@dataclass(frozen=True)
class LogSourceSettings:
    name: str
    path: Path
    max_line_bytes: int = 16384


@dataclass(frozen=True)
class MetricsSettings:
    filesystems: tuple[str, ...] = ("/",)
    fs_timeout_s: float = 2.0
    mailq_command: tuple[str, ...] = ()
    mailq_timeout_s: float = 5.0
    disks: tuple[str, ...] = ()  # empty = every whole disk in /proc/diskstats


@dataclass(frozen=True)
class UdevSettings:
    enabled: bool = True


@dataclass(frozen=True)
class ProbeSettings:
    name: str
    kind: str
    host: str = "127.0.0.1"
    port: int = 0
    tls: str = "none"
    verify_tls: bool = True
    server_name: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    interval_s: float = 30.0
    login_user: str | None = None
    login_password_file: Path | None = None
    http_path: str = "/"
    expect_status: int = 200
    expect_text: str | None = None


@dataclass(frozen=True)
class Config:
    """The whole agent configuration. `sources` lists the files it was read from."""

    agent: AgentSettings = field(default_factory=AgentSettings)
    kmsg: KmsgSettings = field(default_factory=KmsgSettings)
    logs: tuple[LogSourceSettings, ...] = (
        LogSourceSettings("mail", Path("/var/log/mail.log")),
    )
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    udev: UdevSettings = field(default_factory=UdevSettings)
    probes: tuple[ProbeSettings, ...] = ()
    sources: tuple[str, ...] = ()
    #: effective detection rules: the role's shipped defaults + `[rules.*]` (docs/policy.md)
    rules: tuple[Rule, ...] = field(default_factory=lambda: _builtin(parse_rules, "generic"))
    #: effective ladders: the role's shipped defaults + `[policy.*]` (docs/policy.md)
    ladders: tuple[Ladder, ...] = field(default_factory=lambda: _builtin(parse_policy, "generic"))
    #: `[guards.*]` (docs/guards.md)
    guards: GuardSettings = field(default_factory=GuardSettings)
    #: `[actions]`: per-action settings and protected units (agent/actions_settings.py)
    actions: ActionSettings = field(default_factory=ActionSettings)


DEFAULT_PORTS = {
    ("imap", "none"): 143, ("imap", "starttls"): 143, ("imap", "tls"): 993,
    ("pop3", "none"): 110, ("pop3", "starttls"): 110, ("pop3", "tls"): 995,
    ("smtp", "none"): 25, ("smtp", "starttls"): 587, ("smtp", "tls"): 465,
    ("http", "none"): 80, ("http", "tls"): 443,
}


#: a host name as pages, reports and the coordinator carry it (RFC 1123 labels, and `_`)
HOSTNAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*")


def _path(s: Section, name: str, default: Path) -> Path:
    """A directory the agent keeps or reads: absolute, so it never depends on the cwd."""
    text = s.text(name, str(default))
    if not text.strip():
        s.error(name, "must not be empty")
        return default
    if not text.startswith("/") or "\0" in text:
        s.error(name, f"must be an absolute path, not {text!r}")
        return default
    return Path(text)


def _parse_agent(s: Section) -> AgentSettings:
    d = AgentSettings()
    hostname = s.text("hostname", d.hostname)
    if s.has("hostname") and (len(hostname) > 253 or not HOSTNAME_RE.fullmatch(hostname)):
        s.error("hostname", f"{hostname[:80]!r} is not a host name (letters, digits, '-', "
                            "'_' and dots; no spaces or control characters)")
        hostname = d.hostname
    out = AgentSettings(
        mode=s.choice("mode", MODES, d.mode),
        role=s.choice("role", ROLES, d.role),
        hostname=hostname,
        state_dir=_path(s, "state_dir", d.state_dir),
        signatures_dir=_path(s, "signatures_dir", d.signatures_dir),
        sample_interval_s=s.number("sample_interval_s", d.sample_interval_s, minimum=0.05,
                                   maximum=3600.0),
    )
    s.finish()
    return out


def _parse_kmsg(s: Section) -> KmsgSettings:
    d = KmsgSettings()
    out = KmsgSettings(enabled=s.flag("enabled", d.enabled), path=Path(s.text("path", str(d.path))))
    if out.enabled and s.has("path") and not out.path.exists():
        s.error("path", f"{out.path} does not exist (kmsg.enabled = false runs without the "
                        "kernel log)")
    s.finish()
    return out


def _parse_log(name: str, s: Section) -> LogSourceSettings:
    out = LogSourceSettings(
        name=name,
        path=Path(s.text("path", "")),
        max_line_bytes=s.integer("max_line_bytes", 16384, minimum=256, maximum=16 * 1024 * 1024),
    )
    if not s.has("path"):
        s.error("path", "is required")
    s.finish()
    return out


def _parse_metrics(s: Section) -> MetricsSettings:
    d = MetricsSettings()
    out = MetricsSettings(
        filesystems=s.str_list("filesystems", d.filesystems),
        fs_timeout_s=s.number("fs_timeout_s", d.fs_timeout_s, minimum=0.1),
        mailq_command=s.str_list("mailq_command", d.mailq_command),
        mailq_timeout_s=s.number("mailq_timeout_s", d.mailq_timeout_s, minimum=0.1),
        disks=s.str_list("disks", d.disks),
    )
    s.finish()
    return out


def _parse_udev(s: Section) -> UdevSettings:
    out = UdevSettings(enabled=s.flag("enabled", True))
    s.finish()
    return out


def _parse_probe(name: str, s: Section) -> ProbeSettings:
    kind = s.choice("kind", PROBE_KINDS, "tcp")
    tls = s.choice("tls", TLS_MODES, "none")
    if kind in ("http", "tcp") and tls == "starttls":
        s.error("tls", f"starttls is not defined for {kind}; use tls or none")
    port = s.integer("port", DEFAULT_PORTS.get((kind, tls), 0), minimum=1, maximum=65535)
    if port == 0:
        s.error("port", f"is required for a {kind} probe")
    pw = s.opt_str("login_password_file")
    user = s.opt_str("login_user")
    if (user is None) != (pw is None):
        s.error("login_user", "login_user and login_password_file go together")
    out = ProbeSettings(
        name=name,
        kind=kind,
        host=s.text("host", "127.0.0.1"),
        port=port,
        tls=tls,
        verify_tls=s.flag("verify_tls", True),
        server_name=s.opt_str("server_name"),
        connect_timeout_s=s.number("connect_timeout_s", 3.0, minimum=0.01, maximum=600),
        read_timeout_s=s.number("read_timeout_s", 5.0, minimum=0.01, maximum=600),
        interval_s=s.number("interval_s", 30.0, minimum=0.1),
        login_user=user,
        login_password_file=Path(pw) if pw else None,
        http_path=s.text("path", "/"),
        expect_status=s.integer("expect_status", 200, minimum=100, maximum=599),
        expect_text=s.opt_str("expect_text"),
    )
    s.finish()
    return out


def parse_config(
    raw: Mapping[str, Any], file: str, asked: set[str] | None = None
) -> tuple[Config, list[ConfigError]]:
    """Build a Config from parsed TOML, collecting every error (never raises).

    `asked` (optional) collects every dotted key the parsers looked for.
    """
    errors = tree_errors(raw, file)
    if any("nested deeper" in e.reason for e in errors):
        return Config(), errors
    top = Section(raw, file, "", errors, asked)
    default = Config()
    logs = default.logs
    if top.has("logs"):
        logs = tuple(_parse_log(n, s) for n, s in top.tables("logs"))
    agent = _parse_agent(top.table("agent"))
    config = Config(
        agent=agent,
        kmsg=_parse_kmsg(top.table("kmsg")),
        logs=logs,
        metrics=_parse_metrics(top.table("metrics")),
        udev=_parse_udev(top.table("udev")),
        probes=tuple(_parse_probe(n, s) for n, s in top.tables("probes")),
        sources=(file,),
        rules=parse_rules(top, agent.role),
        ladders=parse_policy(top, agent.role),
        guards=parse_guards(top),
        actions=parse_actions(top),
    )
    top.finish()
    return config, errors


def config_path(explicit: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """Which file to read, and whether it must exist (explicitly named) or may be absent."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env), True
    return DEFAULT_CONFIG_PATH, False


def read_config(explicit: str | os.PathLike[str] | None = None) -> tuple[Config, list[ConfigError]]:
    """Read and parse the configuration; returns every error found (empty = valid)."""
    path, required = config_path(explicit)
    if not path.exists():
        if required:
            return Config(), [ConfigError(str(path), "-", "file not found")]
        return Config(sources=("<built-in defaults>",)), []
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Config(), [ConfigError(str(path), "-", f"cannot read: {exc.strerror}")]
    raw, errors = parse_toml(data, str(path))
    if raw is None:
        return Config(), errors
    return parse_config(raw, str(path))


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """The configuration, or ConfigInvalid listing every error: never half a config."""
    config, errors = read_config(explicit)
    if errors:
        raise ConfigInvalid(errors)
    return config
