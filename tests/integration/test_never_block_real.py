"""The never-block reader on a real kernel and psutil, then block-addresses with it (issue 7).

In a pair of network namespaces this test creates (tests/integration/_netns.py), the client
namespace plays the host: its veth addresses (IPv4 and IPv6), a default route via the
server namespace's address (IPv4) and via a second server address (IPv6), and a
resolv.conf in /etc/netns/NAME/ (which `ip netns exec` mounts over /etc/resolv.conf).
The reader runs inside that namespace with the real psutil and /proc; the plan built from
its answer, for a "flood" from the gateway, the resolver, the host itself and a stranger,
adds only the stranger, and after it runs the gateway still reaches the host. Nothing
outside the two namespaces and /etc/netns/NAME is touched, and both are removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.execute import Executor
from remediations import ActionContext, build_plan
from tests.integration._netns import NetnsPair, NetnsRunner, in_ns, ip, netns_pair

pytestmark = pytest.mark.realparts

REPO = Path(__file__).parents[2]
NETNS_ETC = Path("/etc/netns")
#: IPv6 documentation prefix, only ever configured inside the test's namespaces
V6_NET = "2001:db8:e7"
STRANGER = "203.0.113.77"

READ = """
import json, sys
from agent.sources.hostaddrs import read_never_block
print(json.dumps(read_never_block()))
"""


@dataclass(frozen=True)
class Host:
    """The client namespace, set up as a host with a gateway and a resolver."""

    pair: NetnsPair
    gateway4: str
    gateway6: str
    resolver: str
    own6: str


@contextmanager
def host_namespace(prefix: str) -> Iterator[Host]:
    with netns_pair(prefix) as pair:
        net = pair.server_addr.rsplit(".", 1)[0]
        own6, gateway6 = f"{V6_NET}::2", f"{V6_NET}::1"
        ip("-n", pair.server, "addr", "add", f"{gateway6}/64", "dev", "veth0", "nodad")
        ip("-n", pair.client, "addr", "add", f"{own6}/64", "dev", "veth1", "nodad")
        ip("-n", pair.client, "route", "add", "default", "via", pair.server_addr)
        ip("-n", pair.client, "-6", "route", "add", "default", "via", gateway6)
        resolver = f"{net}.53"
        made_etc = not NETNS_ETC.exists()
        conf_dir = NETNS_ETC / pair.client
        conf_dir.mkdir(parents=True)  # fails if it exists: never reuse someone else's
        try:
            (conf_dir / "resolv.conf").write_text(
                f"# nodewarden test namespace {pair.client}\nnameserver {resolver}\n"
                f"nameserver {V6_NET}::53\noptions timeout:1\n")
            yield Host(pair, pair.server_addr, gateway6, resolver, own6)
        finally:
            (conf_dir / "resolv.conf").unlink(missing_ok=True)
            conf_dir.rmdir()
            if made_etc and NETNS_ETC.exists() and not any(NETNS_ETC.iterdir()):
                NETNS_ETC.rmdir()


def read_in(ns: str) -> tuple[tuple[str, str], ...]:
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", READ],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return tuple((a, why) for a, why in json.loads(proc.stdout))


def ctx(never_block: tuple[tuple[str, str], ...]) -> ActionContext:
    return ActionContext(hostname="nwtest-host", state_dir=Path("/nonexistent"),
                         agent_pid=os.getpid(), clock=SystemClock(), never_block=never_block)


def test_the_reader_in_a_namespace_finds_gateways_resolvers_and_own_addresses() -> None:
    with host_namespace("nwn") as host:
        found = dict(read_in(host.pair.client))
        own4a, own4b = host.pair.client_addrs
        assert found[own4a] == found[own4b] == "address of this host on veth1"
        assert found[host.own6] == "address of this host on veth1"
        assert found["127.0.0.1"] == "address of this host on lo"
        assert found[host.gateway4] == "default gateway via veth1"
        assert found[host.gateway6] == "default gateway via veth1"
        assert found[host.resolver] == "resolver in /etc/resolv.conf"
        assert found[f"{V6_NET}::53"] == "resolver in /etc/resolv.conf"
        # and only the namespace's own network: none of the root namespace's interfaces
        assert not any(why.endswith(" on veth0") for why in found.values())
    assert not (NETNS_ETC / host.pair.client).exists()


def test_block_addresses_with_what_the_reader_found_blocks_only_the_stranger() -> None:
    with host_namespace("nwk") as host:
        never = read_in(host.pair.client)
        own4 = host.pair.client_addrs[0]
        subject = ",".join((host.gateway4, f"::ffff:{host.resolver}", own4, host.gateway6,
                            STRANGER))
        plan = build_plan("block-addresses", subject, {"timeout": "10m"}, ctx(never))
        adds = [s.argv for s in plan.steps if s.argv[1:3] == ("add", "element")]
        assert adds == [("nft", "add", "element", "inet", "nodewarden", "blocked4", "{",
                         STRANGER, "timeout", "600s", "}")]
        assert plan.summary == (
            f"block 1 address(es) for 600s; not blocked: {host.gateway4} (default gateway "
            f"via veth1), {host.resolver} (resolver in /etc/resolv.conf), {own4} (address "
            f"of this host on veth1), {host.gateway6} (default gateway via veth1)")
        outcome = Executor(NetnsRunner(host.pair.client), SystemClock()).run(plan)
        assert outcome.ok, outcome.detail
        listed = in_ns(host.pair.client, "nft", "-j", "list", "set", "inet", "nodewarden",
                       "blocked4")
        assert listed.returncode == 0, listed.stderr
        elems = next(x["set"].get("elem", []) for x in json.loads(listed.stdout)["nftables"]
                     if "set" in x)
        assert [e["elem"]["val"] if isinstance(e, dict) else e for e in elems] == [STRANGER]
        # the gateway still reaches the host through the drop chain
        ping = in_ns(host.pair.server, "ping", "-c", "1", "-W", "2", own4)
        assert ping.returncode == 0, ping.stdout + ping.stderr
