"""The sources' settings: `[kmsg]`, `[logs.NAME]`, `[metrics]`, `[udev]`, `[probes.NAME]`
(docs/configuration.md). agent/config.py assembles them with the others."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.schema import Section

PROBE_KINDS = ("imap", "pop3", "smtp", "http", "tcp")
TLS_MODES = ("none", "tls", "starttls")


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


#: the log files followed when the configuration names none
DEFAULT_LOGS = (LogSourceSettings("mail", Path("/var/log/mail.log")),)

DEFAULT_PORTS = {
    ("imap", "none"): 143, ("imap", "starttls"): 143, ("imap", "tls"): 993,
    ("pop3", "none"): 110, ("pop3", "starttls"): 110, ("pop3", "tls"): 995,
    ("smtp", "none"): 25, ("smtp", "starttls"): 587, ("smtp", "tls"): 465,
    ("http", "none"): 80, ("http", "tls"): 443,
}


def parse_kmsg(s: Section) -> KmsgSettings:
    d = KmsgSettings()
    out = KmsgSettings(enabled=s.flag("enabled", d.enabled), path=Path(s.text("path", str(d.path))))
    if out.enabled and s.has("path") and not out.path.exists():
        s.error("path", f"{out.path} does not exist (kmsg.enabled = false runs without the "
                        "kernel log)")
    s.finish()
    return out


def parse_log(name: str, s: Section) -> LogSourceSettings:
    out = LogSourceSettings(
        name=name,
        path=Path(s.text("path", "")),
        max_line_bytes=s.integer("max_line_bytes", 16384, minimum=256, maximum=16 * 1024 * 1024),
    )
    if not s.has("path"):
        s.error("path", "is required")
    s.finish()
    return out


def parse_metrics(s: Section) -> MetricsSettings:
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


def parse_udev(s: Section) -> UdevSettings:
    out = UdevSettings(enabled=s.flag("enabled", True))
    s.finish()
    return out


def parse_probe(name: str, s: Section) -> ProbeSettings:
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
