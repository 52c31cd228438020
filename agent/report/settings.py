"""`[coordinator]`: where the reporter sends the agent's messages (docs/configuration.md).

No table, no reporter: the agent runs alone and a disruptive rung is denied "no
coordinator". With one, `host`, `key_file` and `known_hosts` are required: the
coordinator's host key is pinned (an unknown or changed key is refused, never added).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.schema import Section

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]+")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class ReporterSettings:
    host: str
    key_file: Path
    known_hosts: Path
    port: int = 22
    user: str = "nodewarden"
    heartbeat_s: float = 30.0
    connect_timeout_s: float = 10.0
    #: a message not answered within this is taken as a lost connection
    reply_timeout_s: float = 30.0
    keepalive_s: float = 15.0
    #: the longest wait between two connection attempts (exponential, with jitter)
    backoff_max_s: float = 60.0
    #: messages sent before their answers come back
    window: int = 64
    #: how long a lease request waits for its answer (no answer in time means no)
    lease_timeout_s: float = 5.0
    spool_max_messages: int = 10_000
    spool_max_bytes: int = 16 << 20


def _absolute(s: Section, name: str) -> Path:
    text = s.text(name, "")
    if not text.startswith("/") or "\0" in text:
        s.error(name, f"must be an absolute path, not {text!r}")
    return Path(text or "/")


def parse_reporter(s: Section) -> ReporterSettings | None:
    if not s.raw:
        s.finish()
        return None
    d = ReporterSettings("x", Path("/"), Path("/"))
    host = s.text("host", "")
    if not _HOST.fullmatch(host):
        s.error("host", f"{host[:80]!r} is not a host name or address")
    user = s.text("user", d.user)
    if not _USER.fullmatch(user):
        s.error("user", f"{user[:40]!r} is not a user name")
    out = ReporterSettings(
        host=host, key_file=_absolute(s, "key_file"), known_hosts=_absolute(s, "known_hosts"),
        port=s.integer("port", d.port, minimum=1, maximum=65535), user=user,
        heartbeat_s=s.number("heartbeat_s", d.heartbeat_s, minimum=1.0, maximum=3600.0),
        connect_timeout_s=s.number("connect_timeout_s", d.connect_timeout_s, minimum=0.5,
                                   maximum=300.0),
        reply_timeout_s=s.number("reply_timeout_s", d.reply_timeout_s, minimum=0.5,
                                 maximum=600.0),
        keepalive_s=s.number("keepalive_s", d.keepalive_s, minimum=1.0, maximum=600.0),
        backoff_max_s=s.number("backoff_max_s", d.backoff_max_s, minimum=0.1, maximum=3600.0),
        window=s.integer("window", d.window, minimum=1, maximum=10_000),
        lease_timeout_s=s.number("lease_timeout_s", d.lease_timeout_s, minimum=0.1,
                                 maximum=120.0),
        spool_max_messages=s.integer("spool_max_messages", d.spool_max_messages,
                                     minimum=10, maximum=10_000_000),
        spool_max_bytes=s.integer("spool_max_bytes", d.spool_max_bytes, minimum=1 << 16,
                                  maximum=1 << 34),
    )
    s.finish()
    return out
