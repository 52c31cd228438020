"""One configuration path: `load_config()` is used by every command that reads agent.toml.

The file is TOML (default `/etc/nodewarden/agent.toml`, overridden by `--config` or
`NODEWARDEN_CONFIG`). Every key has a built-in default, so no file is needed. Errors carry
file, key and reason; a configuration with any error is refused whole (ConfigInvalid).
Every key is documented in docs/configuration.md (a test checks the two agree).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.detect.catalog import DEFAULT_SIGNATURES_DIR, Catalog, load_catalog
from agent.detect.rules import Rule, parse_rules
from agent.guards.settings import GuardSettings, parse_guards
from agent.policy.ladder import Ladder, parse_policy
from agent.report.prometheus import TextfileSettings, parse_textfile
from agent.report.settings import ReporterSettings, parse_reporter
from agent.schema import MODES, ConfigError, ConfigInvalid, Section, parse_toml, tree_errors
from agent.sources.settings import (
    DEFAULT_LOGS,
    KmsgSettings,
    LogSourceSettings,
    MetricsSettings,
    ProbeSettings,
    UdevSettings,
    parse_kmsg,
    parse_log,
    parse_metrics,
    parse_probe,
    parse_udev,
)
from remediations import broken_modules, module_name
from remediations._settings import ActionSettings, parse_actions

DEFAULT_CONFIG_PATH = Path("/etc/nodewarden/agent.toml")
CONFIG_ENV = "NODEWARDEN_CONFIG"

ROLES = ("storage", "mail", "generic")

T = TypeVar("T")


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
class Config:
    """The whole agent configuration. `sources` lists the files it was read from."""

    agent: AgentSettings = field(default_factory=AgentSettings)
    kmsg: KmsgSettings = field(default_factory=KmsgSettings)
    logs: tuple[LogSourceSettings, ...] = DEFAULT_LOGS
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: `[metrics] textfile`: the agent's own metrics for node_exporter (docs/deploy.md)
    textfile: TextfileSettings = field(default_factory=TextfileSettings)
    udev: UdevSettings = field(default_factory=UdevSettings)
    probes: tuple[ProbeSettings, ...] = ()
    sources: tuple[str, ...] = ()
    #: effective detection rules: the role's shipped defaults + `[rules.*]` (docs/policy.md)
    rules: tuple[Rule, ...] = field(default_factory=lambda: _builtin(parse_rules, "generic"))
    #: effective ladders: the role's shipped defaults + `[policy.*]` (docs/policy.md)
    ladders: tuple[Ladder, ...] = field(default_factory=lambda: _builtin(parse_policy, "generic"))
    #: `[guards.*]` (docs/guards.md)
    guards: GuardSettings = field(default_factory=GuardSettings)
    #: `[actions]`: per-action settings and protected units (remediations/_settings.py)
    actions: ActionSettings = field(default_factory=ActionSettings)
    #: `[coordinator]`: where the reporter sends (agent/report/settings.py); None: alone
    coordinator: ReporterSettings | None = None


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
    logs: tuple[LogSourceSettings, ...] = DEFAULT_LOGS  # not Config().logs: it parses rules
    if top.has("logs"):
        logs = tuple(parse_log(n, s) for n, s in top.tables("logs"))
    agent = _parse_agent(top.table("agent"))
    metrics = top.table("metrics")
    textfile = parse_textfile(metrics)  # first: parse_metrics finishes the table
    config = Config(
        agent=agent,
        kmsg=parse_kmsg(top.table("kmsg")),
        logs=logs,
        metrics=parse_metrics(metrics),
        textfile=textfile,
        udev=parse_udev(top.table("udev")),
        probes=tuple(parse_probe(n, s) for n, s in top.tables("probes")),
        sources=(file,),
        rules=parse_rules(top, agent.role),
        ladders=parse_policy(top, agent.role),
        guards=parse_guards(top),
        actions=parse_actions(top),
        coordinator=parse_reporter(top.table("coordinator")),
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


def merge_tables(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`, table by table (a scenario's host line on agent.toml)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_tables(out[k], v)
        else:
            out[k] = v
    return out


def read_config(
    explicit: str | os.PathLike[str] | None = None, *,
    overlay: Mapping[str, Any] | None = None, overlay_label: str = "",
) -> tuple[Config, list[ConfigError]]:
    """Read and parse the configuration file (or the built-in defaults), with `overlay`
    laid over it; every error found (empty = valid)."""
    path, required = config_path(explicit)
    raw: dict[str, Any] = {}
    name = "<built-in defaults>"
    if path.exists():
        name = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return Config(), [ConfigError(name, "-", f"cannot read: {exc.strerror or exc}")]
        parsed, errors = parse_toml(data, name)
        if parsed is None:
            return Config(), errors
        raw = parsed
    elif required:
        return Config(), [ConfigError(str(path), "-", "file not found")]
    if overlay:
        return parse_config(merge_tables(raw, overlay), f"{name} + {overlay_label}")
    if not raw and name == "<built-in defaults>":
        return Config(sources=(name,)), []
    return parse_config(raw, name)


@dataclass(frozen=True)
class Loaded:
    """A configuration and what it names, each validated once: the signature catalog
    (built-in and the operator's, every example checked) and every remediation module."""

    config: Config
    catalog: Catalog


def load_config(
    explicit: str | os.PathLike[str] | None = None, *,
    signatures_dir: Path | None = None,
    overlay: Mapping[str, Any] | None = None, overlay_label: str = "",
) -> tuple[Loaded | None, list[ConfigError]]:
    """The one way every command loads its configuration (`run`, SIGHUP, `check`, the
    operator commands, `simulate`): the file or the built-in defaults, an overlay (a
    scenario's host line), then the catalog and the remediation modules it names.

    Returns every error with file, key and reason, and Loaded only when there is none:
    never half a configuration. The catalog is checked even when the file has errors, so
    `check` reports everything at once."""
    config, errors = read_config(explicit, overlay=overlay, overlay_label=overlay_label)
    catalog, catalog_errors = load_catalog(signatures_dir or config.agent.signatures_dir)
    errors = [*errors, *catalog_errors]  # examples: checked by the loader, per signature
    errors += [ConfigError(f"remediations/{module_name(action)}.py", action, reason)
               for action, reason in broken_modules()]
    if errors:
        return None, errors
    return Loaded(config, catalog), []
