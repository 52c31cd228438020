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
Every address is parsed by `ipaddress` (an IPv4-mapped IPv6 address such as
`::ffff:192.0.2.1` is taken as its IPv4 address); networks are not accepted here.
Unspecified, multicast and link-local addresses are refused.

Some addresses are never blocked, whatever the evidence says (a forged SYN source or log
line must not get the host cut off from what it lives by):

- loopback (127.0.0.0/8, ::1) and the `allowlist` setting (addresses and CIDRs): left out
  and named in the summary as "not blocked (allowlisted): 192.0.2.9";
- the host's own protected addresses, which the agent reads from the host before it plans
  a block (agent/sources/hostaddrs.py, at most every 30 s) and passes in
  `ActionContext.never_block`: every address of the host's interfaces, its gateways
  (/proc/net/route, /proc/net/ipv6_route), its resolvers (/etc/resolv.conf and
  systemd-resolved's upstreams), the servers of its network mounts (nfs, cifs, ceph...
  from /proc/self/mountinfo), its iSCSI and NVMe-oF targets, and the coordinator. Each
  is left out and named with its reason, as "not blocked: 192.0.2.1 (default gateway via
  eth0)".

A plan whose addresses are all protected is refused, and the refusal names each address
with its reason. At most `max_addresses` (default 256) are added per plan: the rest are
left out and the summary says how many; the sets themselves hold at most `set_size`
elements.

To see what the host protects: `ip route show default`, `ip -6 route show default`,
`grep nameserver /etc/resolv.conf /run/systemd/resolve/resolv.conf`,
`grep -E 'nfs|cifs|smb3|ceph|gluster' /proc/self/mountinfo`, `ip -brief address`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import ClassVar

from agent.model import Budget, Plan, Step
from remediations import ActionContext, Example, InvalidParams, ParamSpec, Remediation
from remediations._common import (
    IPAddress,
    IPNetwork,
    a_duration,
    address,
    addresses,
    an_int_setting,
    duration_s,
    network,
    networks,
    setting_int,
    setting_list,
    setting_str,
)


def _table_name(name: object) -> str:
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 64:
        raise InvalidParams(f"setting table {name!r} must be an identifier")
    return name


ALWAYS_ALLOWED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

#: (address, why it is left out), in the order the plan met them
LeftOut = list[tuple[IPAddress, str]]


def _table(ctx: ActionContext) -> str:
    return _table_name(setting_str(ctx, "table"))


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


def _never_network(text: str, reason: str) -> IPNetwork:
    """A `never_block` entry as a network (an IPv4-mapped address as IPv4)."""
    try:
        return ipaddress.ip_network(address(text))
    except InvalidParams:
        pass
    try:
        return network(text)
    except InvalidParams:
        raise InvalidParams(f"never_block entry {text!r} ({reason}) is not an address or "
                            f"CIDR network") from None


def _protections(ctx: ActionContext) -> tuple[list[tuple[IPNetwork, str]],
                                              list[tuple[IPNetwork, str]]]:
    """(loopback and the allowlist setting, the host's never_block), each with reasons."""
    allow = [(net, "loopback") for net in ALWAYS_ALLOWED]
    for text in setting_list(ctx, "allowlist"):
        net = network(text)
        allow.append((net, f"allowlist {net}"))
    host = [(_never_network(text, reason), reason) for text, reason in ctx.never_block]
    return allow, host


def _match(addr: IPAddress, nets: list[tuple[IPNetwork, str]]) -> str | None:
    return next((why for net, why in nets if addr.version == net.version and addr in net),
                None)


def select_addresses(
    subject: str, params: Mapping[str, str], ctx: ActionContext
) -> tuple[list[IPAddress], LeftOut, LeftOut, int]:
    """(to block, allowlisted ones left out, the host's protected ones left out, number
    left out over the cap). Loopback and the allowlist are checked first, then
    ctx.never_block; each left-out address is named once, with the first reason found."""
    raw = [a for a in (params.get("addresses") or subject).split(",") if a.strip()]
    if not raw:
        raise InvalidParams("no addresses to block")
    allow, host = _protections(ctx)
    cap = setting_int(ctx, "max_addresses", 1, 65536)
    chosen: list[IPAddress] = []
    allowed: LeftOut = []
    protected: LeftOut = []
    for text in raw:
        addr = address(text)
        if addr.is_unspecified or addr.is_multicast or addr.is_link_local:
            raise InvalidParams(f"{addr} is unspecified, multicast or link-local")
        if addr in chosen or any(addr == a for a, _ in (*allowed, *protected)):
            continue
        if (why := _match(addr, allow)) is not None:
            allowed.append((addr, why))
        elif (why := _match(addr, host)) is not None:
            protected.append((addr, why))
        else:
            chosen.append(addr)
    if not chosen:
        raise InvalidParams("every address is allowlisted (never blocked): "
                            + _named(allowed + protected))
    return chosen[:cap], allowed, protected, max(0, len(chosen) - cap)


def _named(left_out: LeftOut) -> str:
    return ", ".join(f"{addr} ({why})" for addr, why in left_out)


class BlockAddresses(Remediation):
    NAME = "block-addresses"
    SUMMARY = "Drop traffic from abusive addresses for a while (nftables set with timeouts)."
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "addresses": ParamSpec("comma-separated addresses, worst first (default: the "
                               "subject)", check=addresses("addresses")),
        "timeout": ParamSpec("how long each address stays blocked (90s, 15m, 1h, 2d)",
                             default="1h", check=a_duration("timeout")),
    }
    SETTINGS: ClassVar[Mapping[str, ParamSpec]] = {
        "allowlist": ParamSpec("addresses and CIDRs never blocked (loopback and the host's "
                               "own addresses, gateways, resolvers and storage servers "
                               "always are)", default="[]", value=(),
                               check=networks("allowlist")),
        "max_addresses": ParamSpec("most addresses added by one plan", default="256",
                                   value=256, check=an_int_setting("max_addresses", 1, 65536)),
        "set_size": ParamSpec("kernel cap on elements per set", default="65536",
                              value=65536, check=an_int_setting("set_size", 1, 1 << 24)),
        "table": ParamSpec("nftables table name (family inet)", default="nodewarden",
                           check=_table_name),
    }
    SUBJECT = ParamSpec("comma-separated addresses", check=addresses("subject"))
    EXAMPLE = Example(subject="203.0.113.5,2001:db8::7",
                      settings={"allowlist": ["192.0.2.0/24"]})
    BUDGET = Budget(60, 3600.0)
    COOLDOWN_S = 60.0

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        table = _table(ctx)
        timeout = duration_s(params["timeout"], "timeout")
        set_size = setting_int(ctx, "set_size", 1, 1 << 24)
        chosen, allowed, protected, over = select_addresses(subject, params, ctx)
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
        return Plan(self.NAME, subject, tuple(steps), tuple(verify), self.DISRUPTIVE,
                    _summary(chosen, allowed, protected, over, timeout))

    def target(self, subject: str, params: Mapping[str, str]) -> str:
        """The addresses, each written the one way `ipaddress` writes it (`2001:DB8::7`
        and `2001:db8:0::7` are one address), comma-separated; as given when one does not
        parse (the plan refuses it)."""
        raw = [a for a in (params.get("addresses") or subject).split(",") if a.strip()]
        try:
            return ",".join(str(address(a)) for a in raw)
        except InvalidParams:
            return subject.strip()


def _summary(chosen: list[IPAddress], allowed: LeftOut, protected: LeftOut, over: int,
             timeout: int) -> str:
    summary = f"block {len(chosen)} address(es) for {timeout}s"
    if allowed:
        summary += "; not blocked (allowlisted): " + ", ".join(str(a) for a, _ in allowed)
    if protected:
        summary += "; not blocked: " + _named(protected)
    if over:
        summary += f"; {over} more left out (max_addresses {len(chosen)})"
    return summary


ACTION = BlockAddresses()
