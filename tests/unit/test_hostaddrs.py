"""The never-block reader (agent/sources/hostaddrs.py) on captured trees and odd content.

fixtures/hostaddrs_storage is a storage-network mail host: a default route via 192.0.2.1
plus a static route to 10.20.0.0/16, an IPv6 default via fe80::1, /etc/resolv.conf on
systemd-resolved's stub with the real upstreams in /run/systemd/resolve/resolv.conf,
mountinfo with nfs4/nfs/cifs/smb3/ceph/glusterfs mounts (one NFS source a host name,
found through addr=), ext4, a bind mount, tmpfs and an sshfs mount by name (ignored),
one iSCSI connection and an NVMe/TCP controller next to a PCIe one.
fixtures/hostaddrs_plain has no IPv4 default route, an IPv6 default via 2001:db8::1,
a static resolv.conf with comments and a bad line, and /proc/mounts but no mountinfo.
/proc/net/route is in host byte order: the captured trees are a little-endian host's.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from agent.sources.hostaddrs import (
    gateways,
    if_addresses,
    mount_servers,
    read_never_block,
    resolvers,
    storage_targets,
)

FIXTURES = Path(__file__).parent / "fixtures"

IFACES: Mapping[str, Sequence[str]] = {
    "lo": ["127.0.0.1", "::1"],
    "eth0": ["192.0.2.2", "2001:db8::2", "fe80::5054:ff:fe12:3456%eth0"],
}
OWN = (
    ("192.0.2.2", "address of this host on eth0"),
    ("2001:db8::2", "address of this host on eth0"),
    ("fe80::5054:ff:fe12:3456", "address of this host on eth0"),
    ("127.0.0.1", "address of this host on lo"),
    ("::1", "address of this host on lo"),
)


def no_interfaces() -> Mapping[str, Sequence[str]]:
    return {}


def read(tree: str | Path, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    root = tree if isinstance(tree, Path) else FIXTURES / tree
    return read_never_block(root, interfaces=lambda: IFACES, extra=extra)


TREES: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("hostaddrs_storage", (
        *OWN,
        ("192.0.2.1", "default gateway via eth0"),
        ("fe80::1", "default gateway via eth0"),
        ("10.10.0.254", "gateway of the route to 10.20.0.0/16 via eth1"),
        ("127.0.0.53", "systemd-resolved stub in /etc/resolv.conf"),
        ("192.0.2.53", "resolver used by systemd-resolved"),
        ("2001:db8::53", "resolver used by systemd-resolved"),
        ("fe80::53", "resolver used by systemd-resolved"),
        ("192.0.2.5", "server of the nfs4 mount /srv/mail"),
        ("192.0.2.15", "server of the nfs mount /srv/spool"),
        ("2001:db8::5", "server of the nfs4 mount /srv/archive"),
        ("192.0.2.6", "server of the cifs mount /srv/backup share"),
        ("192.0.2.16", "server of the smb3 mount /srv/scans"),
        ("192.0.2.7", "server of the ceph mount /srv/ceph"),
        ("192.0.2.8", "server of the ceph mount /srv/ceph"),
        ("192.0.2.17", "server of the ceph mount /srv/cephfs"),
        ("192.0.2.18", "server of the ceph mount /srv/cephfs"),
        ("192.0.2.9", "server of the fuse.glusterfs mount /srv/gluster"),
        ("192.0.2.30", "iSCSI target of connection1:0"),
        ("192.0.2.31", "NVMe-oF target of nvme1"),
    )),
    ("hostaddrs_plain", (
        *OWN,
        ("2001:db8::1", "default gateway via ens3"),
        ("198.51.100.53", "resolver in /etc/resolv.conf"),
        ("2001:db8:53::1", "resolver in /etc/resolv.conf"),
        ("198.51.100.5", "server of the nfs4 mount /var/mail"),
    )),
]


@pytest.mark.parametrize(("tree", "expected"), TREES, ids=[t for t, _ in TREES])
def test_reads_every_protected_address_of_a_captured_tree(
        tree: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert read(tree) == expected


def test_the_same_tree_gives_the_same_answer() -> None:
    assert read("hostaddrs_storage") == read("hostaddrs_storage")


# --------------------------------------------------------------------------- routes
ROUTE_HEAD = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
V6_DEFAULT_VIA = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
                  "{hop} 00000400 00000002 00000000 00000003     {dev}\n")
V6_UNREACHABLE = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
                  "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200"
                  "       lo\n")

ROUTES: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("no default route",
     ROUTE_HEAD + "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
     V6_UNREACHABLE, []),
    ("default route without the gateway flag is no gateway",
     ROUTE_HEAD + "eth0\t00000000\t010200C0\t0001\t0\t0\t0\t00000000\t0\t0\t0\n", "", []),
    ("two IPv4 defaults (metrics) and a static route listed after them",
     ROUTE_HEAD
     + "eth1\t0000140A\tFE000A0A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
     + "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
     + "eth1\t00000000\tFE000A0A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n", "",
     [("192.0.2.1", "default gateway via eth0"), ("10.10.0.254", "default gateway via eth1"),
      ("10.10.0.254", "gateway of the route to 10.20.0.0/16 via eth1")]),
    ("IPv6 default via a link-local router", "",
     V6_DEFAULT_VIA.format(hop="fe800000000000000000000000000001", dev="eth0"),
     [("fe80::1", "default gateway via eth0")]),
    ("IPv6 default via a global router", "",
     V6_DEFAULT_VIA.format(hop="20010db8000000000000000000000001", dev="bond0"),
     [("2001:db8::1", "default gateway via bond0")]),
    ("garbage", "Iface Destination\nzz\tqq\txx\t0003\t0\t0\t0\tyy\n\x00\xff\n",
     "not a route\n" + "g" * 200 + "\n", []),
]


@pytest.mark.parametrize(("route", "ipv6_route", "expected"),
                         [r[1:] for r in ROUTES], ids=[r[0] for r in ROUTES])
def test_gateways(tmp_path: Path, route: str, ipv6_route: str,
                  expected: list[tuple[str, str]]) -> None:
    (tmp_path / "proc/net").mkdir(parents=True)
    (tmp_path / "proc/net/route").write_text(route)
    (tmp_path / "proc/net/ipv6_route").write_text(ipv6_route)
    assert list(gateways(tmp_path)) == expected


# --------------------------------------------------------------------------- resolvers
RESOLV: list[tuple[str, str, str | None, list[tuple[str, str]]]] = [
    ("static", "nameserver 192.0.2.53\nnameserver 2001:db8::53\n", None,
     [("192.0.2.53", "resolver in /etc/resolv.conf"),
      ("2001:db8::53", "resolver in /etc/resolv.conf")]),
    ("resolved stub and its upstreams", "nameserver 127.0.0.53\noptions edns0\n",
     "nameserver 198.51.100.53\n",
     [("127.0.0.53", "systemd-resolved stub in /etc/resolv.conf"),
      ("198.51.100.53", "resolver used by systemd-resolved")]),
    ("comments, zone, mapped IPv6, junk",
     "#nameserver 192.0.2.1\n; nameserver 192.0.2.2\nnameserver\nnameserver bogus\n"
     "nameserver fe80::1%eth0\nnameserver ::ffff:192.0.2.54\n\x00\xfe\n", None,
     [("fe80::1", "resolver in /etc/resolv.conf"),
      ("192.0.2.54", "resolver in /etc/resolv.conf")]),
]


@pytest.mark.parametrize(("etc", "resolved", "expected"),
                         [r[1:] for r in RESOLV], ids=[r[0] for r in RESOLV])
def test_resolvers(tmp_path: Path, etc: str, resolved: str | None,
                   expected: list[tuple[str, str]]) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text(etc)
    if resolved is not None:
        (tmp_path / "run/systemd/resolve").mkdir(parents=True)
        (tmp_path / "run/systemd/resolve/resolv.conf").write_text(resolved)
    assert list(resolvers(tmp_path)) == expected


# --------------------------------------------------------------------------- mounts
def mountinfo(point: str, fstype: str, source: str, options: str) -> str:
    return f"88 41 0:52 / {point} rw,relatime shared:40 - {fstype} {source} {options}\n"


MOUNTS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("ext4", mountinfo("/", "ext4", "/dev/vda1", "rw,errors=remount-ro"), []),
    ("bind mount", "57 29 254:17 /mail /var/mail rw,relatime shared:25 - ext4 /dev/vdb1 rw\n",
     []),
    ("tmpfs", mountinfo("/run", "tmpfs", "tmpfs", "rw,size=100k"), []),
    ("nfs4 addr=", mountinfo("/srv/mail", "nfs4", "192.0.2.5:/export",
                             "rw,vers=4.2,clientaddr=192.0.2.2,addr=192.0.2.5"),
     [("192.0.2.5", "server of the nfs4 mount /srv/mail")]),
    ("nfs by host name, addr= and mountaddr=",
     mountinfo("/srv/spool", "nfs", "filer.example.net:/export/spool",
               "rw,vers=3,mountaddr=192.0.2.14,mountport=20048,addr=192.0.2.15"),
     [("192.0.2.14", "server of the nfs mount /srv/spool"),
      ("192.0.2.15", "server of the nfs mount /srv/spool")]),
    ("nfs by host name, no address anywhere",
     mountinfo("/srv/x", "nfs", "filer.example.net:/export/x", "rw,vers=3"), []),
    ("nfs over IPv6", mountinfo("/a", "nfs4", "[2001:db8::5]:/export", "rw,vers=4.1"),
     [("2001:db8::5", "server of the nfs4 mount /a")]),
    ("cifs source and ip=", mountinfo("/b", "cifs", "//192.0.2.6/share",
                                      "rw,vers=3.1.1,ip=192.0.2.26"),
     [("192.0.2.26", "server of the cifs mount /b"), ("192.0.2.6", "server of the cifs mount /b")]),
    ("smb3 over IPv6", mountinfo("/c", "smb3", "//[2001:db8::6]/share", "rw"),
     [("2001:db8::6", "server of the smb3 mount /c")]),
    ("ceph monitors with ports", mountinfo("/d", "ceph", "192.0.2.7:6789,192.0.2.8:6789:/",
                                           "rw,name=mail,acl"),
     [("192.0.2.7", "server of the ceph mount /d"), ("192.0.2.8", "server of the ceph mount /d")]),
    ("ceph mon_addr= with IPv6", mountinfo("/e", "ceph", "mail@fsid.cephfs=/",
                                           "rw,mon_addr=[2001:db8::17]:3300/192.0.2.18:6789"),
     [("2001:db8::17", "server of the ceph mount /e"),
      ("192.0.2.18", "server of the ceph mount /e")]),
    ("lustre NIDs", mountinfo("/f", "lustre", "192.0.2.40@tcp:192.0.2.41@tcp1:/fs", "rw"),
     [("192.0.2.40", "server of the lustre mount /f"),
      ("192.0.2.41", "server of the lustre mount /f")]),
    ("sshfs user@address, mounted by root", mountinfo("/g", "fuse.sshfs",
                                                      "backup@192.0.2.4:/srv",
                                                      "rw,user_id=0,group_id=0"),
     [("192.0.2.4", "server of the fuse.sshfs mount /g")]),
    # a user's own FUSE mount (fusermount sets user_id to the mounting user) may name any
    # "server": it must not make an address unblockable (red-team M6)
    ("a user's FUSE mount", mountinfo("/home/eve/m", "fuse.evil", "203.0.113.5@tcp:/x",
                                      "rw,nosuid,nodev,user_id=1000,group_id=1000"), []),
    ("a user's FUSE mount naming an NFS-like source",
     mountinfo("/home/eve/n", "fuse", "203.0.113.6:/srv", "rw,user_id=1000,group_id=1000"),
     []),
    ("escaped and control characters in the mount point",
     mountinfo("/srv/a\\040b\\012c", "nfs", "192.0.2.5:/x", "rw"),
     [("192.0.2.5", "server of the nfs mount /srv/a b?c")]),
    ("garbage", "\x00\xff - \n - nfs\n1 2 3\n88 41 0:52 / /x rw - nfs 999.1.1.1:/x addr=x\n", []),
]


@pytest.mark.parametrize(("lines", "expected"), [m[1:] for m in MOUNTS],
                         ids=[m[0] for m in MOUNTS])
def test_mount_servers(tmp_path: Path, lines: str, expected: list[tuple[str, str]]) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(lines)
    assert list(mount_servers(tmp_path)) == expected


def test_storage_targets_skip_what_is_not_an_address(tmp_path: Path) -> None:
    conn = tmp_path / "sys/class/iscsi_connection/connection2:0"
    conn.mkdir(parents=True)
    (conn / "persistent_address").write_text("target.example.net\n")
    (conn / "address").write_text("[2001:db8::30]\n")
    nvme = tmp_path / "sys/class/nvme/nvme3"
    nvme.mkdir(parents=True)
    (nvme / "address").write_text("traddr=nqn.2014-08.org.nvmexpress:fc,host_traddr=x\n")
    assert list(storage_targets(tmp_path)) == [("2001:db8::30", "iSCSI target of connection2:0")]


# --------------------------------------------------------------------------- whole reader
def test_a_missing_tree_gives_only_the_interfaces(tmp_path: Path) -> None:
    assert read(tmp_path / "absent") == OWN
    assert read_never_block(tmp_path, interfaces=no_interfaces) == ()


def test_unreadable_files_are_skipped(tmp_path: Path) -> None:
    for name in ("proc/net/route", "proc/net/ipv6_route", "etc/resolv.conf",
                 "proc/self/mountinfo"):
        (tmp_path / name).mkdir(parents=True)  # a directory where a file should be
    (tmp_path / "sys/class/nvme").parent.mkdir(parents=True)
    (tmp_path / "sys/class/nvme").write_text("a file where a directory should be")
    assert read_never_block(tmp_path, interfaces=no_interfaces) == ()


def test_an_address_with_several_reasons_is_listed_once(tmp_path: Path) -> None:
    (tmp_path / "proc/net").mkdir(parents=True)
    (tmp_path / "proc/net/route").write_text(
        ROUTE_HEAD + "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text("nameserver 192.0.2.1\nnameserver 192.0.2.1\n")
    got = read_never_block(tmp_path, interfaces=no_interfaces,
                           extra=[("192.0.2.1", "coordinator")])
    assert got == (("192.0.2.1",
                    "default gateway via eth0; resolver in /etc/resolv.conf; coordinator"),)


def test_extra_is_where_the_coordinator_goes(tmp_path: Path) -> None:
    extra = [("::ffff:198.51.100.20", "coordinator"), ("2001:db8:c::/48", "coordinator")]
    assert read(tmp_path, extra)[-2:] == (("198.51.100.20", "coordinator"),
                                          ("2001:db8:c::/48", "coordinator"))
    with pytest.raises(ValueError, match=r"'coord.example.net' \(coordinator\) is not an IP"):
        read(tmp_path, [("coord.example.net", "coordinator")])


def test_interfaces_that_cannot_be_listed_are_skipped(tmp_path: Path) -> None:
    def broken() -> Mapping[str, Sequence[str]]:
        raise OSError("getifaddrs failed")
    assert read_never_block(FIXTURES / "hostaddrs_plain", interfaces=broken)[0] == (
        "2001:db8::1", "default gateway via ens3")


def test_this_host_through_psutil() -> None:
    """The live host, as a check that the default parts work: loopback is always there."""
    own = if_addresses()
    assert "127.0.0.1" in own.get("lo", [])
    assert all(socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET,
                                a.split("%")[0]) for addrs in own.values() for a in addrs)
    assert ("127.0.0.1", "address of this host on lo") in read_never_block()
