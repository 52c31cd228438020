"""The coordinator's configuration: `--config FILE` (default DEFAULT_PATH), built-in
defaults without one; errors name the file, the key and the reason, as the agent's do
(agent/schema.py's Section). docs/coordinator.md lists every key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.schema import ConfigError, Section, parse_toml

DEFAULT_PATH = Path("/etc/nodewarden/coordinator.toml")
DEFAULT_STORE = "sqlite:////var/lib/nodewarden-coordinator/fleet.db"
DEFAULT_AUTHORIZED_KEYS = "/var/lib/nodewarden-coordinator/.ssh/authorized_keys"
#: where `serve` listens for the sessions sshd starts (coordinator/serve.py)
DEFAULT_SERVE_SOCKET = "/run/nodewarden-coordinator/serve.sock"
#: host, group and role names: what a forced command and a log line can carry plainly
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: the agent's finding severities, least to most severe
SEVERITIES = ("info", "warning", "error", "critical")


#: how alerts reach people (coordinator/notify.py delivers them)
KINDS = ("webhook", "command", "email")


@dataclass(frozen=True)
class Notifier:
    name: str
    kind: str
    url: str = ""
    argv: tuple[str, ...] = ()
    timeout_s: float = 10.0
    #: email: the SMTP server, the envelope sender and the recipients
    smtp_host: str = ""
    smtp_port: int = 25
    starttls: bool = False
    sender: str = ""
    to: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupSettings:
    """What the coordinator allows one group of hosts."""

    #: disruptive actions (node-restart, failover) running at once in the group
    max_disruptive: int = 1
    #: more than this share of the group with a firing finding of `storm_severity` or
    #: worse is a storm: leases are refused and a person paged once
    storm_percent: float = 30.0
    storm_severity: str = "critical"
    contacts: tuple[str, ...] = ()
    #: actions whose lease waits for a person's `approve ID` (the request is refused
    #: "awaiting approval" and the group's contacts are told)
    approve: tuple[str, ...] = ()


@dataclass(frozen=True)
class CoordinatorSettings:
    store_url: str = DEFAULT_STORE
    authorized_keys: str = DEFAULT_AUTHORIZED_KEYS
    #: the program a forced command runs (the console script, or its full path)
    command: str = "nodewarden-coordinator"
    #: the longest lease an agent may ask for
    max_ttl_s: float = 3600.0
    #: the longest a lease may be renewed to live, from its grant
    max_lifetime_s: float = 4 * 3600.0
    #: `watch`: a host not heard from for this long is silent (an alert for a person)
    silent_after_s: float = 90.0
    #: problems whose subject is a shared dependency (an NFS or CIFS server, a Ceph
    #: daemon): the same one firing on `correlate_min_hosts` hosts or more is one
    #: incident. Never a problem whose subject is the host's own (a hung task's name, an
    #: iSCSI session or multipath path number): two hosts would be one false incident
    correlate: tuple[str, ...] = ("nfs-not-responding", "cifs-not-responding", "ceph-error")
    correlate_min_hosts: int = 2
    #: `[notifiers.NAME]`: how alerts reach people (coordinator/notify.py)
    notifiers: Mapping[str, Notifier] = field(default_factory=lambda: MappingProxyType({}))
    #: a delivered alert not acknowledged within this goes to the group's next contact
    ack_within_s: float = 900.0
    groups: Mapping[str, GroupSettings] = field(
        default_factory=lambda: MappingProxyType({}))
    #: a group not listed gets these
    default_group: GroupSettings = GroupSettings()
    #: the Unix socket of `serve`, the one long-running process behind thin sessions;
    #: "" runs each session in its own process (small fleets, no `serve` needed)
    serve_socket: str = DEFAULT_SERVE_SOCKET
    #: sessions `serve` holds at once; one over is refused, "at its session limit"
    max_sessions: int = 2000
    #: how long a person's approval stays good for the lease it approves
    approval_valid_s: float = 3600.0

    def group(self, name: str) -> GroupSettings:
        return self.groups.get(name, self.default_group)


def _group(sec: Section) -> GroupSettings:
    base = GroupSettings()
    out = GroupSettings(
        max_disruptive=sec.integer("max_disruptive", base.max_disruptive, minimum=0,
                                   maximum=10_000),
        storm_percent=sec.number("storm_percent", base.storm_percent, minimum=0.0,
                                 maximum=100.0),
        storm_severity=sec.choice("storm_severity", SEVERITIES, base.storm_severity),
        contacts=sec.str_list("contacts"),
        approve=sec.str_list("approve"),
    )
    sec.finish()
    if any(not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", a) for a in out.approve):
        sec.error("approve", "lists actions by their remediation's name (node-restart)")
    return out


def parse_settings(raw: Mapping[str, object], file: str
                   ) -> tuple[CoordinatorSettings, list[ConfigError]]:
    errors: list[ConfigError] = []
    top = Section(raw, file, "", errors)
    store = top.table("store")
    url = store.text("url", DEFAULT_STORE)
    store.finish()
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        store.error("url", "must start with sqlite:///, postgresql:// or postgres://")
    elif "\0" in url or not url.isprintable():
        store.error("url", "must be printable text without NUL")
    ssh = top.table("ssh")
    keys = ssh.text("authorized_keys", DEFAULT_AUTHORIZED_KEYS)
    command = ssh.text("command", "nodewarden-coordinator")
    ssh.finish()
    if not keys.startswith("/"):
        ssh.error("authorized_keys", "must be an absolute path")
    if not re.fullmatch(r"[A-Za-z0-9/._-]+", command):
        ssh.error("command", "must be a plain program name or path (it is written into "
                  "each key's forced command)")
    leases = top.table("leases")
    max_ttl = leases.number("max_ttl_s", 3600.0, minimum=1.0, maximum=86400.0)
    max_life = leases.number("max_lifetime_s", 4 * 3600.0, minimum=1.0, maximum=7 * 86400.0)
    approval_valid = leases.number("approval_valid_s", 3600.0, minimum=1.0,
                                   maximum=7 * 86400.0)
    leases.finish()
    watch = top.table("watch")
    silent = watch.number("silent_after_s", 90.0, minimum=1.0, maximum=7 * 86400.0)
    watch.finish()
    correlation = top.table("correlation")
    correlate = correlation.str_list("problems", CoordinatorSettings.correlate)
    min_hosts = correlation.integer("min_hosts", 2, minimum=2, maximum=100_000)
    correlation.finish()
    notifiers = {name: _notifier(name, sec) for name, sec in top.tables("notifiers")}
    alerts = top.table("alerts")
    ack_within = alerts.number("ack_within_s", 900.0, minimum=1.0, maximum=7 * 86400.0)
    alerts.finish()
    serve_socket, max_sessions = _serve(top.table("serve"))
    default = _group(top.table("default_group"))
    groups = {}
    for name, sec in top.tables("groups"):
        if not NAME.fullmatch(name):
            errors.append(ConfigError(file, f"groups.{name}", "a group name is 1-63 "
                                      "letters, digits, '.', '_' or '-'"))
            continue
        groups[name] = _group(sec)
    top.finish()
    for where, group in [("default_group", default),
                         *((f"groups.{n}", g) for n, g in groups.items())]:
        for contact in group.contacts:
            if contact not in notifiers:
                errors.append(ConfigError(file, f"{where}.contacts", f"{contact!r} is not a "
                                          "notifier ([notifiers.NAME])"))
    return CoordinatorSettings(url, keys, command, max_ttl, max_life, silent, correlate,
                               min_hosts, MappingProxyType(notifiers), ack_within,
                               MappingProxyType(groups), default, serve_socket=serve_socket,
                               max_sessions=max_sessions,
                               approval_valid_s=approval_valid), errors


def _serve(sec: Section) -> tuple[str, int]:
    path = sec.text("socket", DEFAULT_SERVE_SOCKET)
    max_sessions = sec.integer("max_sessions", 2000, minimum=1, maximum=100_000)
    sec.finish()
    if path and (not path.startswith("/") or not path.isprintable()
                 or len(path.encode()) > 100):
        sec.error("socket", "must be an absolute path of at most 100 bytes, or \"\" to run "
                  "each session in its own process")
    return path, max_sessions


def _notifier(name: str, sec: Section) -> Notifier:
    kind = sec.choice("kind", KINDS, "webhook")
    url = sec.text("url", "") if kind == "webhook" else ""
    argv = sec.str_list("argv") if kind == "command" else ()
    timeout = sec.number("timeout_s", 10.0, minimum=0.1, maximum=300.0)
    email = _email_fields(sec) if kind == "email" else {}
    sec.finish()
    if kind == "webhook" and not url.startswith(("http://", "https://")):
        sec.error("url", "a webhook needs an http:// or https:// url")
    if kind == "command" and (not argv or not argv[0].startswith("/")):
        sec.error("argv", "a command needs argv with an absolute program path")
    return Notifier(name, kind, url, tuple(argv), timeout, **email)


_ADDRESS = re.compile(r"[^\s@<>,;:\"]+@[A-Za-z0-9.-]+")


def _email_fields(sec: Section) -> dict[str, Any]:
    host = sec.text("smtp_host", "")
    if not host or not host.isprintable() or " " in host:
        sec.error("smtp_host", "an email notifier needs its SMTP server")
    sender = sec.text("from", "nodewarden-coordinator@localhost")
    to = sec.str_list("to")
    for key, addresses in (("from", [sender]), ("to", list(to))):
        bad = [a for a in addresses if not _ADDRESS.fullmatch(a)]
        if bad or not addresses:
            sec.error(key, f"needs mail addresses (user@domain), not {bad or 'none'}")
    return {"smtp_host": host, "smtp_port": sec.integer("smtp_port", 25, minimum=1,
                                                        maximum=65535),
            "starttls": sec.flag("starttls", False), "sender": sender, "to": tuple(to)}


def load_settings(path: Path | None) -> tuple[CoordinatorSettings | None, list[ConfigError]]:
    """The settings from `path` (None: DEFAULT_PATH if it exists, else the defaults)."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return CoordinatorSettings(), []
        path = DEFAULT_PATH
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [ConfigError(str(path), "-", f"cannot read: {exc.strerror or exc}")]
    raw, errors = parse_toml(data, str(path))
    if raw is None:
        return None, errors
    settings, errors = parse_settings(raw, str(path))
    return (None if errors else settings), errors
