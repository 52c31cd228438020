"""Half-open (SYN_RECV) connections per port and address: `tcp_synrecv.<port>.<address>`.

The /proc/net/tcp and tcp6 texts below are in the kernel's format (get_openreq4/6 lines
for state 03, listeners and established sockets around them) as a little-endian host
prints them: each 32-bit word of an address is a native-order integer in hex. The TcpExt
counters come from the captured fixtures proc_t0 (before) and proc_t1 (SyncookiesSent
+40, ListenOverflows +200: SYN pressure).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from agent.clock import FakeClock
from agent.sources import procfs
from agent.sources.metrics import MetricsSampler
from agent.sources.metricspec import SYNRECV_INTERVAL_S, SYNRECV_LINGER_S
from agent.sources.settings import MetricsSettings

FIXTURES = Path(__file__).parent / "fixtures"
NO_SLOW = MetricsSettings(filesystems=(), mailq_command=())

TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   "
              "uid  timeout inode\n")
TCP6_HEADER = ("  sl  local_address                         remote_address                  "
               "      st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")

# 10.0.0.1 listens on 443 and 25. SYN_RECV: 203.0.113.5 x3 and 198.51.100.7 x2 and
# 192.0.2.9 x1 on 443, 203.0.113.5 x2 on 25; two ESTABLISHED (01) from 203.0.113.5.
TCP = TCP_HEADER + """\
   0: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1000 1 0000000000000000 100 0 0 10 0
   1: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   2: 0100000A:01BB 057100CB:C350 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   3: 0100000A:01BB 057100CB:C351 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   4: 0100000A:01BB 057100CB:C352 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   5: 0100000A:01BB 076433C6:9C40 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   6: 0100000A:01BB 076433C6:9C41 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   7: 0100000A:01BB 090200C0:8235 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   8: 0100000A:0019 057100CB:C738 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   9: 0100000A:0019 057100CB:C739 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
  10: 0100000A:01BB 057100CB:CB20 01 00000000:00000000 00:00000000 00000000     0        0 1010 1 0000000000000000 100 0 0 10 0
  11: 0100000A:01BB 057100CB:CB21 01 00000000:00000000 00:00000000 00000000     0        0 1011 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501 (captured lines)

# A dual-stack listener on 443: ::ffff:203.0.113.5 x2 (IPv4-mapped), 2001:db8::7 x2,
# and a TIME_WAIT (06) from 2001:db8::8.
TCP6 = TCP6_HEADER + """\
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2000 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100000A:01BB 0000000000000000FFFF0000057100CB:C35A 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   2: 0000000000000000FFFF00000100000A:01BB 0000000000000000FFFF0000057100CB:C35B 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   3: B80D0120000000000000000001000000:01BB B80D0120000000000000000007000000:A028 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   4: B80D0120000000000000000001000000:01BB B80D0120000000000000000007000000:A029 03 00000000:00000000 01:00000064 00000000     0        0 0 0 0000000000000000
   5: B80D0120000000000000000001000000:01BB B80D0120000000000000000008000000:A02A 06 00000000:00000000 00:00000000 00000000     0        0 2005 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501 (captured lines)

EXPECTED = {
    "tcp_synrecv.443.203.0.113.5": 5.0,  # 3 over IPv4 + 2 IPv4-mapped over tcp6
    "tcp_synrecv.443.198.51.100.7": 2.0,
    "tcp_synrecv.443.2001:db8::7": 2.0,
    "tcp_synrecv.25.203.0.113.5": 2.0,
    # 192.0.2.9 has one entry: below the floor of 2
}


def synrecv(values: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if k.startswith("tcp_synrecv.")}


class Trees:
    """Proc roots with only net/: `netstat` from a captured fixture, tcp and tcp6 given;
    `root` is a symlink re-pointed from one tree to the next."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "proc"

    def make(self, name: str, netstat_from: str, tcp: str | None = TCP,
             tcp6: str | None = TCP6) -> Path:
        net = self.tmp / name / "net"
        net.mkdir(parents=True)
        shutil.copy(FIXTURES / netstat_from / "net" / "netstat", net / "netstat")
        for file, text in (("tcp", tcp), ("tcp6", tcp6)):
            if text is None:
                (net / file).mkdir()  # reading it fails: proves whether it was read
            else:
                (net / file).write_text(text)
        return self.tmp / name

    def point(self, tree: Path) -> None:
        if self.root.is_symlink():
            self.root.unlink()
        self.root.symlink_to(tree)


def sampler_after(trees: Trees, first: Path, second: Path, clock: FakeClock,
                  synrecv_max_bytes: int = 1 << 20) -> MetricsSampler:
    trees.point(first)
    sampler = MetricsSampler(NO_SLOW, clock, trees.root, trees.tmp / "nosys",
                             background=False, synrecv_max_bytes=synrecv_max_bytes)
    trees.point(second)
    clock.advance(2.0)
    return sampler


# --------------------------------------------------------------------------- parsers
def test_synrecv_counted_per_port_and_address_with_ipv4_mapped_as_ipv4() -> None:
    counts: dict[tuple[int, str], int] = {}
    procfs.count_synrecv(TCP, counts)
    procfs.count_synrecv(TCP6, counts)
    assert counts == {
        (443, "203.0.113.5"): 5, (443, "198.51.100.7"): 2, (443, "192.0.2.9"): 1,
        (25, "203.0.113.5"): 2, (443, "2001:db8::7"): 2,
    }


def test_top_per_port_keeps_the_busiest_above_the_floor() -> None:
    counts = {(443, f"198.51.100.{i}"): i for i in range(1, 15)}
    counts[(25, "192.0.2.1")] = 1
    top = procfs.top_per_port(counts, top_n=10, minimum=2)
    assert top == {(443, f"198.51.100.{i}"): i for i in range(5, 15)}
    assert procfs.top_per_port(counts, top_n=3, minimum=14) == {(443, "198.51.100.14"): 14}


def test_read_bounded_stops_at_the_bound_on_a_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "tcp"
    path.write_text(TCP)
    whole, cut = procfs.read_bounded(str(path), 1 << 20)
    assert (whole, cut) == (TCP, False)
    part, cut = procfs.read_bounded(str(path), len(TCP) // 2)
    assert cut is True
    assert TCP.startswith(part) and part.endswith("\n")
    assert len(TCP) // 2 - 200 < len(part) <= len(TCP) // 2


# --------------------------------------------------------------------------- sampler
def test_under_syn_pressure_the_top_sources_are_metrics(tmp_path: Path) -> None:
    trees, clock = Trees(tmp_path), FakeClock()
    sample = sampler_after(trees, trees.make("t0", "proc_t0"), trees.make("t1", "proc_t1"),
                           clock).sample()
    assert sample.values["tcp_syncookies_sent_per_s"] == 20.0  # the gate
    assert synrecv(sample.values) == EXPECTED
    assert not any(k.startswith("tcp_synrecv") for k in sample.details)  # read in full


def test_without_syn_pressure_the_tables_are_not_read(tmp_path: Path) -> None:
    trees, clock = Trees(tmp_path), FakeClock()
    # both tables are directories: any read would fail and mark the family unavailable
    quiet = trees.make("q1", "proc_t0", tcp=None, tcp6=None)
    sample = sampler_after(trees, trees.make("q0", "proc_t0", tcp=None, tcp6=None), quiet,
                           clock).sample()
    assert sample.values["tcp_syncookies_sent_per_s"] == 0.0
    assert sample.values["tcp_listen_overflows_per_s"] == 0.0
    assert synrecv(sample.values) == {}
    assert "tcp_synrecv.<port>.<address>" not in sample.unavailable


def test_unreadable_tables_under_pressure_are_unavailable_with_the_reason(
    tmp_path: Path
) -> None:
    trees, clock = Trees(tmp_path), FakeClock()
    sample = sampler_after(trees, trees.make("t0", "proc_t0"),
                           trees.make("t1", "proc_t1", tcp=None, tcp6=None), clock).sample()
    assert synrecv(sample.values) == {}
    assert "tcp_synrecv.<port>.<address>" in sample.unavailable
    assert "Is a directory" in sample.reasons["tcp_synrecv.<port>.<address>"]


def test_read_bound_counts_the_first_part_only_and_says_so(tmp_path: Path) -> None:
    trees, clock = Trees(tmp_path), FakeClock()
    bound = TCP.index("   5: ")  # the header, listeners and the three 203.0.113.5 on 443
    sample = sampler_after(trees, trees.make("t0", "proc_t0"), trees.make("t1", "proc_t1"),
                           clock, synrecv_max_bytes=bound).sample()
    # tcp6 was not read at all: the bound was used up by tcp
    assert synrecv(sample.values) == {"tcp_synrecv.443.203.0.113.5": 3.0}
    note = sample.details["tcp_synrecv.443.203.0.113.5"]
    assert note == (f"counted in the first {bound} bytes of /proc/net/tcp and tcp6 only "
                    "(more sockets than that)")


def test_a_reported_source_lingers_at_its_current_count_then_goes(tmp_path: Path) -> None:
    trees, clock = Trees(tmp_path), FakeClock()
    t1 = trees.make("t1", "proc_t1")
    sampler = sampler_after(trees, trees.make("t0", "proc_t0"), t1, clock)
    assert synrecv(sampler.sample().values) == EXPECTED
    # the flood is blocked: no more pressure (same counters), the entries drained but one
    drained = TCP_HEADER + TCP.splitlines(keepends=True)[9]  # one 203.0.113.5 on port 25
    trees.point(trees.make("t2", "proc_t1", tcp=drained, tcp6=TCP6_HEADER))
    clock.advance(2.0)  # within SYNRECV_INTERVAL_S: the last scan's values, not re-read
    assert synrecv(sampler.sample().values) == EXPECTED
    clock.advance(SYNRECV_INTERVAL_S)
    sample = sampler.sample()
    assert sample.values["tcp_syncookies_sent_per_s"] == 0.0
    assert synrecv(sample.values) == dict.fromkeys(EXPECTED, 0.0) | {
        "tcp_synrecv.25.203.0.113.5": 1.0}
    clock.advance(SYNRECV_LINGER_S + 1)
    assert synrecv(sampler.sample().values) == {}
    # and with nothing lingering and no pressure, the tables are not read again
    trees.point(trees.make("t3", "proc_t1", tcp=None, tcp6=None))
    clock.advance(2.0)
    sample = sampler.sample()
    assert synrecv(sample.values) == {}
    assert "tcp_synrecv.<port>.<address>" not in sample.unavailable
