"""Block abusive source addresses for a while: an nftables set with per-element timeouts.

## When
A SYN flood or an authentication flood from a set of addresses starves a service (the
default policy blocks the top offending addresses of the finding for an hour). The
subject, or the `addresses` parameter, lists them, worst first, comma-separated.

## What it does
One atomic `nft` transaction makes sure the table `inet nodewarden` exists with the sets
`blocked4`/`blocked6` (`flags timeout`, a kernel size cap) and a chain hooked at input
(priority filter - 10) that drops `ip saddr @blocked4` and `ip6 saddr @blocked6`; the chain
is flushed and its two rules re-added, so running it again never duplicates rules. A
second `nft` call adds the addresses with `timeout`. Elements expire by themselves.

## Verify
`nft get element inet nodewarden blocked4 { ADDR }` exits 0 for each blocked address.
By hand: `nft list set inet nodewarden blocked4` shows each element with its expiry.

## Undo
One address: `nft delete element inet nodewarden blocked4 { 203.0.113.5 }`.
Everything: `nft delete table inet nodewarden`. An address that is already blocked keeps
its first expiry (nft does not refresh it on a second add).

## Safety
Every address is parsed by `ipaddress`; networks are not accepted here. Loopback
(127.0.0.0/8, ::1) and the `allowlist` setting (addresses and CIDRs) are never blocked:
allowlisted addresses are left out of the plan and named in its summary, and a plan with
only allowlisted addresses is refused. Unspecified, multicast and link-local addresses are
refused. At most `max_addresses` (default 256) are added per plan: the rest are left out
and the summary says how many; the sets themselves hold at most `set_size` elements.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from agent.model import Plan, Step
from remediations import ActionContext, Example, InvalidParams, ParamSpec
from remediations._common import (
    IPAddress,
    address,
    duration_s,
    network,
    reasons_of,
    setting_int,
    setting_list,
    setting_str,
)

NAME = "block-addresses"
SUMMARY = "Drop traffic from abusive addresses for a while (nftables set with timeouts)."
DISRUPTIVE = False
NEEDS_LEASE = False
PARAMS: Mapping[str, ParamSpec] = {
    "addresses": ParamSpec("comma-separated addresses, worst first (default: the subject)"),
    "timeout": ParamSpec("how long each address stays blocked (90s, 15m, 1h, 2d)",
                         default="1h"),
}
SETTINGS: Mapping[str, ParamSpec] = {
    "allowlist": ParamSpec("addresses and CIDRs never blocked (loopback always is)",
                           default="[]"),
    "max_addresses": ParamSpec("most addresses added by one plan", default="256"),
    "set_size": ParamSpec("kernel cap on elements per set", default="65536"),
    "table": ParamSpec("nftables table name (family inet)", default="nodewarden"),
}
EXAMPLE = Example(subject="203.0.113.5,2001:db8::7",
                  settings={"allowlist": ["192.0.2.0/24"]})

ALWAYS_ALLOWED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _table(ctx: ActionContext) -> str:
    name = setting_str(ctx, "table", "nodewarden")
    if not name.isidentifier() or len(name) > 64:
        raise InvalidParams(f"setting table {name!r} must be an identifier")
    return name


def ensure_argv(table: str, set_size: int) -> tuple[str, ...]:
    """One nft transaction creating (idempotently) the table, both sets and the chain."""
    def add_set(name: str, kind: str) -> tuple[str, ...]:
        return ("add", "set", "inet", table, name, "{", "type", kind, ";", "flags",
                "timeout", ";", "size", str(set_size), ";", "}", ";")
    return (
        "nft", "add", "table", "inet", table, ";",
        *add_set("blocked4", "ipv4_addr"),
        *add_set("blocked6", "ipv6_addr"),
        "add", "chain", "inet", table, "input", "{", "type", "filter", "hook", "input",
        "priority", "filter", "-", "10", ";", "policy", "accept", ";", "}", ";",
        "flush", "chain", "inet", table, "input", ";",
        "add", "rule", "inet", table, "input", "ip", "saddr", "@blocked4", "drop", ";",
        "add", "rule", "inet", table, "input", "ip6", "saddr", "@blocked6", "drop",
    )


def _elements(addrs: list[IPAddress], timeout: int | None) -> tuple[str, ...]:
    out: list[str] = ["{"]
    for i, addr in enumerate(addrs):
        out.append(str(addr))
        if timeout is not None:
            out += ["timeout", f"{timeout}s"]
        if i < len(addrs) - 1:
            out.append(",")
    return (*out, "}")


def select_addresses(
    subject: str, params: Mapping[str, str], ctx: ActionContext
) -> tuple[list[IPAddress], list[IPAddress], int]:
    """(to block, allowlisted ones left out, number left out over the cap)."""
    raw = [a for a in (params.get("addresses") or subject).split(",") if a.strip()]
    if not raw:
        raise InvalidParams("no addresses to block")
    allow = [*ALWAYS_ALLOWED, *(network(a) for a in setting_list(ctx, "allowlist"))]
    cap = setting_int(ctx, "max_addresses", 256, 1, 65536)
    chosen: list[IPAddress] = []
    allowed: list[IPAddress] = []
    for text in raw:
        addr = address(text)
        if addr.is_unspecified or addr.is_multicast or addr.is_link_local:
            raise InvalidParams(f"{addr} is unspecified, multicast or link-local")
        if any(addr.version == net.version and addr in net for net in allow):
            allowed.append(addr)
        elif addr not in chosen:
            chosen.append(addr)
    if not chosen:
        raise InvalidParams("every address is allowlisted (never blocked): "
                            + ", ".join(map(str, allowed)))
    return chosen[:cap], allowed, max(0, len(chosen) - cap)


def plan(subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
    table = _table(ctx)
    timeout = duration_s(params.get("timeout", "1h"), "timeout")
    set_size = setting_int(ctx, "set_size", 65536, 1, 1 << 24)
    chosen, allowed, over = select_addresses(subject, params, ctx)
    steps = [Step(ensure_argv(table, set_size), 30.0,
                  f"ensure table inet {table}, sets and drop rules")]
    verify = []
    for set_name, version in (("blocked4", 4), ("blocked6", 6)):
        addrs = [a for a in chosen if a.version == version]
        if addrs:
            steps.append(Step(("nft", "add", "element", "inet", table, set_name,
                               *_elements(addrs, timeout)), 30.0,
                              f"block {len(addrs)} IPv{version} address(es)"))
            verify.append(Step(("nft", "get", "element", "inet", table, set_name,
                                *_elements(addrs, None)), 30.0,
                               f"IPv{version} address(es) in {set_name}"))
    summary = f"block {len(chosen)} address(es) for {timeout}s"
    if allowed:
        summary += "; not blocked (allowlisted): " + ", ".join(map(str, allowed))
    if over:
        summary += f"; {over} more left out (max_addresses {len(chosen)})"
    return Plan(NAME, subject, tuple(steps), tuple(verify), DISRUPTIVE, summary)


def preconditions(subject: str, params: Mapping[str, str], ctx: ActionContext) -> list[str]:
    return reasons_of(plan, subject, params, ctx)
