"""A real SYN flood between two network namespaces this test creates, seen by the sampler.

Namespace A (server) listens with a backlog of 32 on an IPv4 port and on a dual-stack
(IPv6, IPv4-mapped) port. Namespace B (client) sends bare SYNs from a raw socket, from two
addresses, and drops every TCP segment coming back in its own nftables input chain (B's
namespace only), so no RST or ACK answers the SYN-ACKs: A keeps real SYN_RECV entries
until the queue is full and then sends SYN cookies (the pressure that opens the gate).
The sampler runs inside A (`ip netns exec`), so it reads A's /proc/net/{tcp,tcp6,netstat}.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration._netns import in_ns, netns_pair
from tests.integration._provoked import record

REPO = Path(__file__).parents[2]
PORT4, PORT_DUAL = 8025, 8443
BACKLOG = 32

# In A: listen, prime the sampler, say "ready", wait for a line, sample, print the values.
SERVER = """
import json, socket, sys
from agent.clock import SystemClock
from agent.config import MetricsSettings
from agent.sources.metrics import MetricsSampler
addr, port4, port_dual, backlog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s4.bind((addr, port4)); s4.listen(backlog)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
# an IPv4-mapped address, not "::": IPv4 clients still land in tcp6 as ::ffff:, and
# the kernel's flood line names the test's own address
s6.bind(("::ffff:" + addr, port_dual)); s6.listen(backlog)
sampler = MetricsSampler(MetricsSettings(filesystems=(), mailq_command=()), SystemClock(),
                         background=False)
print("ready", flush=True)
sys.stdin.readline()
sample = sampler.sample()
print(json.dumps({"values": dict(sample.values), "unavailable": sorted(sample.unavailable)}),
      flush=True)
"""

# In B: `count` bare SYNs from `src` to dst:port, each from its own source port.
SENDER = """
import socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
port, count, base = (int(a) for a in sys.argv[3:6])
def csum(data):
    if len(data) % 2:
        data += b"\\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.bind((src, 0))
for i in range(count):
    sport = base + i
    hdr = struct.pack("!HHIIBBHHH", sport, port, 1000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    hdr = hdr[:16] + struct.pack("!H", csum(pseudo + hdr)) + hdr[18:]
    raw.sendto(hdr, (dst, 0))
"""


def run_ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.realparts
def test_half_open_flood_sources_are_reported_per_port_and_address() -> None:
    with netns_pair("nws") as pair:
        flooder, other = pair.client_addrs
        nft = ("add table inet nwt ; "
               "add chain inet nwt in { type filter hook input priority 0 ; policy accept ; } ; "
               "add rule inet nwt in meta l4proto tcp drop")
        run_ok(in_ns(pair.client, "nft", nft))
        server = subprocess.Popen(
            ["ip", "netns", "exec", pair.server, sys.executable, "-c", SERVER,
             pair.server_addr, str(PORT4), str(PORT_DUAL), str(BACKLOG)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            assert server.stdout is not None and server.stdin is not None
            assert server.stdout.readline().strip() == "ready", server.stderr
            # the kernel will say so, once per listener: test_scan_dmesg excuses these
            record(*(f"TCP: request_sock_TCP: Possible SYN flooding on port {where}. "
                     "Sending cookies." for where in (
                         f"{pair.server_addr}:{PORT4}",
                         f"[::ffff:{pair.server_addr}]:{PORT_DUAL}")))
            for port in (PORT4, PORT_DUAL):
                # 3 SYNs from `other` first, then a flood from `flooder` past the backlog
                run_ok(in_ns(pair.client, sys.executable, "-c", SENDER, other,
                             pair.server_addr, str(port), "3", "20000"))
                run_ok(in_ns(pair.client, sys.executable, "-c", SENDER, flooder,
                             pair.server_addr, str(port), str(4 * BACKLOG), "30000"))
            tables = run_ok(in_ns(pair.server, "ss", "-Hnt", "state", "syn-recv"))
            server.stdin.write("go\n")
            server.stdin.flush()
            out, err = server.communicate(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
        assert server.returncode == 0, err
        got = json.loads(out)
        values = got["values"]
        assert values["tcp_syncookies_sent_per_s"] > 0  # the queue overflowed: the gate
        for port in (PORT4, PORT_DUAL):
            # the SYN queue holds at most the backlog: 3 from `other`, the rest `flooder`
            assert values[f"tcp_synrecv.{port}.{other}"] == 3, (values, tables)
            flood = values[f"tcp_synrecv.{port}.{flooder}"]
            assert BACKLOG // 2 <= flood <= BACKLOG + 1, (values, tables)
        synrecv = sorted(k for k in values if k.startswith("tcp_synrecv."))
        assert synrecv == sorted(f"tcp_synrecv.{p}.{a}" for p in (PORT4, PORT_DUAL)
                                 for a in (flooder, other))  # IPv4, never ::ffff:...
