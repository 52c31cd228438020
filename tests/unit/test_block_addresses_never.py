"""block-addresses never blocks the host's own protected addresses (issue 7).

Whatever the evidence says (a forged SYN source, a forged log line), the host's own
addresses, gateways, resolvers, mount servers and the coordinator, passed by the driver in
`ActionContext.never_block`, are left out of the plan and named with their reason; a plan
left with nothing to block is refused with the reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import pytest

from agent.clock import FakeClock
from agent.sources.hostaddrs import read_never_block
from remediations import ActionContext, InvalidParams, build_plan, load

FIXTURES = Path(__file__).parent / "fixtures"

HOST: tuple[tuple[str, str], ...] = (
    ("192.0.2.2", "address of this host on eth0"),
    ("2001:db8::2", "address of this host on eth0"),
    ("192.0.2.1", "default gateway via eth0"),
    ("192.0.2.53", "resolver in /etc/resolv.conf"),
    ("2001:db8::5", "server of the nfs4 mount /srv/mail"),
    ("::ffff:192.0.2.15", "server of the nfs mount /srv/spool"),
    ("198.51.100.0/28", "coordinator"),
)


def ctx(never_block: Sequence[tuple[str, str]] = HOST,
        settings: Mapping[str, object] | None = None) -> ActionContext:
    return ActionContext("mail1", Path("/var/lib/nodewarden"), 4242, FakeClock(),
                         settings=MappingProxyType(dict(settings or {})),
                         never_block=tuple(never_block), python="/usr/bin/python3")


def blocked(subject: str, context: ActionContext) -> tuple[list[str], str]:
    """(the addresses the plan's nft steps add, the plan's summary)."""
    plan = build_plan("block-addresses", subject, {}, context)
    added = [tok for step in plan.steps[1:] for tok in step.argv[7:]
             if tok not in ("{", "}", ",", "timeout", "3600s")]
    return added, plan.summary


LEFT_OUT: list[tuple[str, str, dict[str, object], list[str], str]] = [
    ("own address", "192.0.2.2,203.0.113.5", {}, ["203.0.113.5"],
     "block 1 address(es) for 3600s; not blocked: 192.0.2.2 (address of this host on eth0)"),
    ("default gateway", "203.0.113.5,192.0.2.1", {}, ["203.0.113.5"],
     "block 1 address(es) for 3600s; not blocked: 192.0.2.1 (default gateway via eth0)"),
    ("resolver", "192.0.2.53,203.0.113.5", {}, ["203.0.113.5"],
     "block 1 address(es) for 3600s; not blocked: 192.0.2.53 (resolver in /etc/resolv.conf)"),
    ("IPv6 filer", "2001:db8::5,2001:db8::7", {}, ["2001:db8::7"],
     "block 1 address(es) for 3600s; not blocked: 2001:db8::5 (server of the nfs4 mount "
     "/srv/mail)"),
    ("IPv4-mapped evidence is its IPv4 address", "::ffff:192.0.2.1,203.0.113.5", {},
     ["203.0.113.5"],
     "block 1 address(es) for 3600s; not blocked: 192.0.2.1 (default gateway via eth0)"),
    ("an IPv4-mapped never_block entry protects the IPv4 address", "192.0.2.15,203.0.113.5",
     {}, ["203.0.113.5"],
     "block 1 address(es) for 3600s; not blocked: 192.0.2.15 (server of the nfs mount "
     "/srv/spool)"),
    ("a CIDR in never_block", "198.51.100.7,203.0.113.5", {}, ["203.0.113.5"],
     "block 1 address(es) for 3600s; not blocked: 198.51.100.7 (coordinator)"),
    ("each left out once, in the order given", "192.0.2.1,203.0.113.5,192.0.2.2,192.0.2.1",
     {}, ["203.0.113.5"],
     "block 1 address(es) for 3600s; not blocked: 192.0.2.1 (default gateway via eth0), "
     "192.0.2.2 (address of this host on eth0)"),
    ("allowlist CIDR still works, and is named first", "127.0.0.9,203.0.113.7,192.0.2.1,"
     "203.0.113.9", {"allowlist": ["203.0.113.0/29", "192.0.2.0/24"]}, ["203.0.113.9"],
     "block 1 address(es) for 3600s; not blocked (allowlisted): 127.0.0.9, 203.0.113.7, "
     "192.0.2.1"),
    ("allowlisted and protected in one plan", "203.0.113.7,192.0.2.53,2001:db8::2,203.0.113.9",
     {"allowlist": ["203.0.113.7"]}, ["203.0.113.9"],
     "block 1 address(es) for 3600s; not blocked (allowlisted): 203.0.113.7; not blocked: "
     "192.0.2.53 (resolver in /etc/resolv.conf), 2001:db8::2 (address of this host on eth0)"),
]


@pytest.mark.parametrize(("subject", "settings", "expected", "summary"),
                         [c[1:] for c in LEFT_OUT], ids=[c[0] for c in LEFT_OUT])
def test_protected_addresses_are_left_out_and_named(
        subject: str, settings: dict[str, object], expected: list[str], summary: str) -> None:
    assert blocked(subject, ctx(settings=settings)) == (expected, summary)


def test_without_never_block_nothing_else_is_protected() -> None:
    assert blocked("192.0.2.1", ctx(())) == (
        ["192.0.2.1"], "block 1 address(es) for 3600s")


REFUSED: list[tuple[str, str, Sequence[tuple[str, str]], dict[str, object], str]] = [
    ("everything protected", "192.0.2.1,::ffff:192.0.2.53,2001:db8::5", HOST, {},
     "every address is allowlisted (never blocked): 192.0.2.1 (default gateway via eth0), "
     "192.0.2.53 (resolver in /etc/resolv.conf), 2001:db8::5 (server of the nfs4 mount "
     "/srv/mail)"),
    ("loopback, allowlist and host together", "127.0.0.1,203.0.113.7,192.0.2.2", HOST,
     {"allowlist": ["203.0.113.0/24"]},
     "every address is allowlisted (never blocked): 127.0.0.1 (loopback), 203.0.113.7 "
     "(allowlist 203.0.113.0/24), 192.0.2.2 (address of this host on eth0)"),
    ("a malformed never_block entry", "203.0.113.5", [("filer.example.net", "nfs server")], {},
     "never_block entry 'filer.example.net' (nfs server) is not an address or CIDR network"),
]


@pytest.mark.parametrize(("subject", "never", "settings", "reason"),
                         [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_with_the_reasons(subject: str, never: Sequence[tuple[str, str]],
                                  settings: dict[str, object], reason: str) -> None:
    context = ctx(never, settings)
    with pytest.raises(InvalidParams) as err:
        build_plan("block-addresses", subject, {}, context)
    assert err.value.reasons == [reason]
    assert load("block-addresses").preconditions(subject, {}, context) == [reason]


def test_plan_is_pure_over_ctx() -> None:
    """Same ctx, same plan: never_block is read by the driver, not by plan()."""
    subject = "192.0.2.1,203.0.113.5,2001:db8::7"
    assert build_plan("block-addresses", subject, {}, ctx()) == build_plan(
        "block-addresses", subject, {}, ctx())


def test_what_the_reader_finds_is_never_blocked() -> None:
    """Reader and action together, on the captured storage host: a flood 'from' its
    gateway, resolver, filers and iSCSI target blocks only the stranger."""
    never = read_never_block(FIXTURES / "hostaddrs_storage",
                             interfaces=lambda: {"eth0": ["192.0.2.2"]})
    subject = "192.0.2.1,10.10.0.254,192.0.2.53,192.0.2.5,::ffff:192.0.2.15,2001:db8::5,"\
              "192.0.2.30,192.0.2.2,203.0.113.66"
    added, summary = blocked(subject, ctx(never))
    assert added == ["203.0.113.66"]
    assert summary == (
        "block 1 address(es) for 3600s; not blocked: 192.0.2.1 (default gateway via eth0), "
        "10.10.0.254 (gateway of the route to 10.20.0.0/16 via eth1), 192.0.2.53 (resolver "
        "used by systemd-resolved), 192.0.2.5 (server of the nfs4 mount /srv/mail), "
        "192.0.2.15 (server of the nfs mount /srv/spool), 2001:db8::5 (server of the nfs4 "
        "mount /srv/archive), 192.0.2.30 (iSCSI target of connection1:0), 192.0.2.2 "
        "(address of this host on eth0)")
