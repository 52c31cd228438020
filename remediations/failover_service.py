"""Move a service's traffic off this host: drain it in HAProxy, stop keepalived, or run
the site's failover command.

## When
This host can no longer serve (its storage shut a filesystem down, a disk path hangs)
but a peer can: the default policy fails the service over on `fs-shutdown` and pages.
Choose the backend with `via` (or the `via` setting):

- `haproxy`: `set server BACKEND/SERVER state drain` through the HAProxy runtime API
  admin socket (`stats socket ... level admin`), via the helper
  `python3 -m agent.execute.haproxy_cmd` (no socat needed). A draining server takes no
  new connections; existing ones finish.
- `keepalived`: `systemctl stop keepalived.service` on this host. Stopping keepalived
  sends a priority-0 advertisement, so the backup takes the virtual address at once
  (chosen over lowering the priority: it needs no edit of keepalived.conf and is undone
  by a start).
- `site`: the argv in the `command` setting (placeholders `{subject}`, `{hostname}`,
  `{server}` fill whole tokens).

## Preconditions
The failover target must be healthy, checked read-only before acting: for haproxy,
another server of the same backend is UP, not draining and not in maintenance (from
`show servers state BACKEND`); for keepalived and site, the `peer_check` command (an argv
that exits 0 when the peer is healthy) must succeed; without one the action is refused.

## Verify
haproxy: `show servers state` reports the server draining (`haproxy_cmd expect ...
drain`). keepalived: `systemctl is-active keepalived.service` says inactive (exit 3).
site: the `verify_command` setting, if any.

## Undo
haproxy: `echo "set server BACKEND/SERVER state ready" | socat stdio SOCKET` (or
`python3 -m agent.execute.haproxy_cmd send SOCKET "set server BACKEND/SERVER state
ready"`). keepalived: `systemctl start keepalived.service`. site: the site's runbook.

## Safety
Disruptive and needs a lease: the coordinator keeps a group from failing over all at
once. Backend and server names are checked (`[A-Za-z0-9_.:-]`), so nothing can smuggle
a second runtime API command (`;`) into the socket.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from agent.model import Budget, Plan, Step
from remediations import ActionContext, Example, InvalidParams, ParamSpec, Remediation
from remediations._common import (
    SYSTEMCTL,
    a_duration,
    a_unit,
    an_absolute_path,
    an_argv,
    duration_s,
    fill_argv,
    helper,
    setting_argv,
    setting_str,
    unit_name,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
VIAS = ("haproxy", "keepalived", "site")


def _via_name(via: object) -> str:
    if via not in VIAS:
        raise InvalidParams(f"via {via!r} must be one of {', '.join(VIAS)}")
    return str(via)


def _server(server: object) -> str:
    text = str(server) if isinstance(server, str) else ""
    backend, sep, name = text.partition("/")
    if not sep or not _NAME_RE.match(backend) or not _NAME_RE.match(name):
        raise InvalidParams(f"server {server!r} must be BACKEND/SERVER "
                            f"(letters, digits, _.:-)")
    return text


def _via(params: Mapping[str, str], ctx: ActionContext) -> str:
    return _via_name(params.get("via") or setting_str(ctx, "via"))


def _haproxy(params: Mapping[str, str], ctx: ActionContext) -> tuple[str, str]:
    """(socket, BACKEND/SERVER), validated."""
    sock = params.get("socket") or setting_str(ctx, "haproxy_socket")
    if not sock.startswith("/") or not sock.isprintable():
        raise InvalidParams(f"socket {sock!r} must be an absolute path")
    server = _server(params.get("server") or ctx.settings.get("haproxy_server", ""))
    return sock, server


def _values(subject: str, ctx: ActionContext, params: Mapping[str, str]) -> dict[str, str]:
    return {"subject": subject, "hostname": ctx.hostname, "server": params.get("server", "")}


def _steps(via: str, subject: str, params: Mapping[str, str], ctx: ActionContext,
           timeout: float) -> tuple[tuple[Step, ...], tuple[Step, ...], str]:
    """(steps, verify, summary) of a failover through `via`."""
    verify: tuple[Step, ...]
    if via == "haproxy":
        sock, server = _haproxy(params, ctx)
        steps = (Step(helper(ctx, "haproxy_cmd", "send", sock,
                             f"set server {server} state drain"),
                      timeout, f"drain {server} in haproxy"),)
        verify = (Step(helper(ctx, "haproxy_cmd", "expect", sock, server, "drain"), 15.0,
                       f"{server} is draining"),)
        return steps, verify, f"drain {server} through {sock}"
    if via == "keepalived":
        unit = unit_name(setting_str(ctx, "keepalived_unit"))
        steps = (Step((SYSTEMCTL, "stop", "--", unit), timeout,
                      "stop keepalived: the backup takes the virtual address"),)
        verify = (Step((SYSTEMCTL, "is-active", "--quiet", "--", unit), 15.0,
                       f"{unit} is inactive", ok_exit=(3,)),)
        return steps, verify, f"stop {unit} so the VRRP backup takes over"
    command = setting_argv(ctx, "command")
    if command is None:
        raise InvalidParams("via site needs the `command` setting")
    values = _values(subject, ctx, params)
    steps = (Step(fill_argv(command, values), timeout, "site failover command"),)
    check = setting_argv(ctx, "verify_command")
    verify = (Step(fill_argv(check, values), 60.0, "site verify command"),) if check else ()
    return steps, verify, f"site failover of {subject}"


class FailoverService(Remediation):
    """The target is the service being moved off this host, as given."""

    NAME = "failover-service"
    SUMMARY = "Move a service's traffic to a healthy peer (HAProxy drain, keepalived, site)."
    DISRUPTIVE = True
    NEEDS_LEASE = True
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "via": ParamSpec("haproxy, keepalived or site (default: the `via` setting, else "
                         "haproxy)", check=_via_name),
        "server": ParamSpec("haproxy: BACKEND/SERVER to drain (default: `haproxy_server`)",
                            check=_server),
        "socket": ParamSpec("haproxy: admin socket (default: `haproxy_socket`)",
                            check=an_absolute_path("socket")),
        "timeout": ParamSpec("how long the failover step may take", default="60s",
                             check=a_duration("timeout", hi=3600)),
    }
    SETTINGS: ClassVar[Mapping[str, ParamSpec]] = {
        "via": ParamSpec("default backend", default="haproxy", check=_via_name),
        "haproxy_socket": ParamSpec("HAProxy admin socket", default="/run/haproxy/admin.sock",
                                    check=an_absolute_path("haproxy_socket")),
        "haproxy_server": ParamSpec("BACKEND/SERVER that is this host", check=_server),
        "keepalived_unit": ParamSpec("keepalived's unit", default="keepalived.service",
                                     check=a_unit("keepalived_unit")),
        "command": ParamSpec("site failover argv ({subject} {hostname} {server})",
                             check=an_argv("command")),
        "verify_command": ParamSpec("site: argv that exits 0 once failed over",
                                    check=an_argv("verify_command")),
        "peer_check": ParamSpec("keepalived/site: argv that exits 0 when the peer is "
                                "healthy", check=an_argv("peer_check")),
    }
    SUBJECT = ParamSpec("the service moved off this host (any name)")
    EXAMPLE = Example(subject="imap", params={"server": "imap/mail1"},
                      settings={"haproxy_socket": "/run/haproxy/admin.sock"})
    # counted per host: a failover storm moves a whole site (docs/architecture.md safety property 3)
    BUDGET = Budget(3, 86400.0, "host")
    COOLDOWN_S = 3600.0

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        via = _via(params, ctx)
        timeout = float(duration_s(params["timeout"], "timeout", hi=3600))
        steps, verify, summary = _steps(via, subject, params, ctx, timeout)
        return Plan(self.NAME, subject, steps, verify, self.DISRUPTIVE, summary)

    def preconditions(
        self, subject: str, params: Mapping[str, str], ctx: ActionContext
    ) -> list[str]:
        """What plan() refuses; then the failover target must be healthy (a read-only
        check: the HAProxy backend has another server UP, or the site's peer_check)."""
        reasons = super().preconditions(subject, params, ctx)
        if reasons:
            return reasons
        ctx = self.with_settings(ctx)
        via = _via(params, ctx)
        if via == "haproxy":
            sock, server = _haproxy(params, ctx)
            check = Step(helper(ctx, "haproxy_cmd", "healthy-peer", sock, server), 15.0,
                         f"another server of {server.partition('/')[0]} is UP")
        else:
            argv = setting_argv(ctx, "peer_check")
            if argv is None:
                return [f"failover via {via} needs the `peer_check` setting (an argv that "
                        f"exits 0 when the peer is healthy); refusing to fail over blind"]
            check = Step(fill_argv(argv, _values(subject, ctx, params)), 30.0, "peer check")
        if ctx.runner is None:
            return ["cannot check the failover target: no read-only runner"]
        result = ctx.runner.run(check)
        if result.ran and (result.timed_out or result.exit_code != 0):
            said = (result.stdout.strip() or result.stderr.strip()).splitlines()
            return [f"failover target not healthy ({check.description}): "
                    + (said[-1] if said else f"exit {result.exit_code}")]
        return []


ACTION = FailoverService()
