"""Addresses this host must never block, read from the host itself (issue 7).

block-addresses acts on evidence an attacker can shape: a forged SYN source, a forged log
line. Whatever that evidence says, the agent must not cut the host off from the parts it
lives by, so before a block is planned the driver reads, and passes to the action as
`ActionContext.never_block`, (address or CIDR, reason) pairs for:

* **this host's own addresses**: every interface's IPv4 and IPv6 addresses (from
  `psutil.net_if_addrs()`, injected as `interfaces`), reason "address of this host on
  eth0". Link-local ones are listed too (block-addresses refuses them anyway).
* **gateways**: `/proc/net/route` (IPv4; `Gateway` is the address as a 32-bit word in host
  byte order, printed in hex; a route with the RTF_GATEWAY flag) and `/proc/net/ipv6_route`
  (the next hop of a route, 32 hex digits in network order). The default route's next
  hop is "default gateway via eth0"; the next hop of any other route via a router
  (a static route to the storage network) is protected as well. Only the main routing
  table is in these files: next hops of policy-routing tables are not seen.
* **resolvers**: the `nameserver` lines of `/etc/resolv.conf` and of
  `/run/systemd/resolve/resolv.conf`, where systemd-resolved lists its real upstreams
  (when /etc/resolv.conf points at its stub, 127.0.0.53, those are what answers; programs
  using nss-resolve go to them even when /etc/resolv.conf does not). A zone suffix
  (`fe80::1%eth0`) is dropped.
* **servers of network mounts**: from `/proc/self/mountinfo` (`/proc/mounts` when it is
  absent), whatever the filesystem type: the options `addr=` and `mountaddr=` (nfs,
  nfs4, cifs and smb3 show the server's address there), `ip=` (cifs), `mon_addr=`
  (ceph monitors, `/`-separated, with ports), and the host part of the mount source when
  it is an IP literal (`192.0.2.5:/export`, `[2001:db8::5]:/export`, `//192.0.2.6/share`,
  ceph's `192.0.2.7:6789,192.0.2.8:6789:/`, lustre's `192.0.2.9@tcp:/fs`,
  `user@192.0.2.4:/dir`). Bind mounts and local filesystems have none of these.
* **storage targets**: iSCSI connections
  (`/sys/class/iscsi_connection/*/persistent_address` and `address`) and NVMe over
  TCP/RDMA controllers (`traddr=` of `/sys/class/nvme/*/address`).
* **extra** pairs the caller passes: the coordinator's address, reason "coordinator".

Every path is under `root` ("/" on a host; tests pass a captured tree). A missing or
unreadable file is skipped (a container may have no /proc/net/ipv6_route) and an odd line
is ignored: the reader never raises on what it reads. Host names are never resolved
(`filer.example:/export` counts only through its `addr=` option): a DNS lookup before a
block would be slow, could depend on the resolver under attack, and could be steered by
whoever controls the name. Addresses are normalised by `ipaddress` (IPv4-mapped IPv6
becomes IPv4), each is listed once with its reasons joined by "; ", in a stable order:
own addresses, gateways, resolvers, mount servers, storage targets, extra. A read is a
few small files and one getifaddrs() call, about a millisecond: cheap enough to repeat
before block plans (the driver reads it at most every 30 s).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

#: interface name -> its addresses as text (the injected part; default: psutil)
InterfaceAddrs = Callable[[], Mapping[str, Sequence[str]]]
#: (address or CIDR, why it is never blocked)
NeverBlock = tuple[tuple[str, str], ...]

#: systemd-resolved's stub listeners: not the real resolvers, which its own file lists
RESOLVED_STUBS = ("127.0.0.53", "127.0.0.54")
RESOLVED_CONF = "run/systemd/resolve/resolv.conf"

RTF_GATEWAY = 0x0002
#: mount options whose value is the server's address (mon_addr: "a:port/b:port")
_ADDR_OPTIONS = ("addr", "mountaddr", "ip", "mon_addr")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
#: a lustre network identifier: 192.0.2.9@tcp, 10.1.0.1@o2ib1
_LUSTRE_NID = re.compile(r"(\d+\.\d+\.\d+\.\d+)@[a-z]+\d*")
_MAX_REASON = 160


def if_addresses() -> dict[str, list[str]]:
    """Every interface's IPv4 and IPv6 addresses, from getifaddrs() through psutil."""
    import psutil

    families = (socket.AF_INET, socket.AF_INET6)
    return {name: [a.address for a in addrs if a.family in families]
            for name, addrs in psutil.net_if_addrs().items()}


def read_never_block(
    root: Path = Path("/"),
    *,
    interfaces: InterfaceAddrs = if_addresses,
    extra: Iterable[tuple[str, str]] = (),
) -> NeverBlock:
    """(address, reason) pairs block-addresses must never block, for ActionContext.

    `extra` is for addresses the host's files do not show, as (address or CIDR, reason):
    the pipeline passes `[(coordinator_address, "coordinator")]` once there is a
    coordinator. An `extra` entry that is not an address or CIDR raises ValueError (it
    comes from configuration, not from the host, and must not be dropped silently).
    """
    found: dict[str, list[str]] = {}

    def add(pairs: Iterable[tuple[str, str]]) -> None:
        for text, reason in pairs:
            reasons = found.setdefault(text, [])
            if reason not in reasons:
                reasons.append(reason)

    add(own_addresses(interfaces))
    add(gateways(root))
    add(resolvers(root))
    add(mount_servers(root))
    add(storage_targets(root))
    add(_extra(extra))
    return tuple((text, "; ".join(reasons)) for text, reasons in found.items())


# --------------------------------------------------------------------------- helpers
def _read(path: Path) -> str:
    """The file's text, or "" when it is missing or unreadable."""
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def _addr(text: str) -> str | None:
    """Normalised address text (no zone, IPv4-mapped as IPv4), or None if it is not one."""
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _printable(text: str) -> str:
    """A name from a file, fit for a one-line reason (mountinfo escapes, no controls)."""
    text = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


# --------------------------------------------------------------------------- sources
def own_addresses(interfaces: InterfaceAddrs) -> Iterator[tuple[str, str]]:
    try:
        table = interfaces()
    except OSError:
        return
    for name in sorted(table):
        for text in table[name]:
            addr = _addr(text)
            if addr is not None:
                yield addr, f"address of this host on {_printable(name)}"


def _route_reason(dest: str, plen: int, dev: str) -> str:
    if plen == 0:
        return f"default gateway via {_printable(dev)}"
    return f"gateway of the route to {dest}/{plen} via {_printable(dev)}"


def gateways(root: Path) -> Iterator[tuple[str, str]]:
    """Next hops of the main table's routes; default routes first, IPv4 before IPv6."""
    found = [*_gateways4(_read(root / "proc/net/route")),
             *_gateways6(_read(root / "proc/net/ipv6_route"))]
    found.sort(key=lambda g: g[0] != 0)  # stable: default routes first
    for _, addr, reason in found:
        yield addr, reason


def _ipv4_hex(text: str) -> str:
    """A /proc/net/route field: the address as a 32-bit word in host byte order."""
    return str(ipaddress.IPv4Address(int(text, 16).to_bytes(4, sys.byteorder)))


def _gateways4(text: str) -> Iterator[tuple[int, str, str]]:
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dev, dest, gw = fields[0], _ipv4_hex(fields[1]), _ipv4_hex(fields[2])
            flags = int(fields[3], 16)
            plen = bin(int(fields[7], 16)).count("1")
        except ValueError:
            continue
        if flags & RTF_GATEWAY and gw != "0.0.0.0":
            yield plen, gw, _route_reason(dest, plen, dev)


def _gateways6(text: str) -> Iterator[tuple[int, str, str]]:
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            dest = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            plen = int(fields[1], 16)
            hop = _addr(str(ipaddress.IPv6Address(bytes.fromhex(fields[4]))))
        except ValueError:
            continue
        if hop is not None and hop != "::":
            yield plen, hop, _route_reason(str(dest), plen, fields[9])


def _nameservers(text: str) -> Iterator[str]:
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            addr = _addr(fields[1])
            if addr is not None:
                yield addr


def resolvers(root: Path) -> Iterator[tuple[str, str]]:
    for addr in _nameservers(_read(root / "etc/resolv.conf")):
        why = "systemd-resolved stub" if addr in RESOLVED_STUBS else "resolver"
        yield addr, f"{why} in /etc/resolv.conf"
    for addr in _nameservers(_read(root / RESOLVED_CONF)):
        yield addr, "resolver used by systemd-resolved"


def _mounts(root: Path) -> Iterator[tuple[str, str, str, str]]:
    """(fstype, source, mount point, options) of each mount."""
    text = _read(root / "proc/self/mountinfo")
    if text:
        for line in text.splitlines():
            head, sep, tail = line.partition(" - ")
            before, after = head.split(), tail.split()
            if sep and len(before) >= 6 and len(after) >= 2:
                options = before[5] + ("," + after[2] if len(after) > 2 else "")
                yield after[0], after[1], before[4], options
        return
    for line in _read(root / "proc/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 4:
            yield fields[2], fields[0], fields[1], fields[3]


def _option_addresses(options: str) -> Iterator[str]:
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key in _ADDR_OPTIONS:
            for part in value.split("/"):
                addr = _addr(part) or _addr(part.rpartition(":")[0])
                if addr is not None:
                    yield addr


def _source_addresses(source: str) -> Iterator[str]:
    """IP literals in a mount source: host:/path, [v6]:/path, //host/share, a:p,b:p:/."""
    if source.startswith("//"):  # cifs, smb3: //192.0.2.6/share
        candidates = [source[2:].split("/", 1)[0]]
    elif source.startswith("/"):
        return  # a device, a directory (bind mount) or a path-like name
    elif source.startswith("["):  # nfs over IPv6: [2001:db8::5]:/export
        candidates = [source[1:].partition("]")[0]]
    elif nids := _LUSTRE_NID.findall(source):  # 192.0.2.9@tcp:192.0.2.10@tcp:/fs
        candidates = nids
    else:  # 192.0.2.5:/export, user@192.0.2.4:/dir, 192.0.2.7:6789,192.0.2.8:6789:/
        servers = source.split(":/", 1)[0]
        candidates = [s.rpartition("@")[2] for s in servers.split(",")]
    for host in candidates:
        addr = _addr(host) or _addr(host.rpartition(":")[0])  # maybe with a :port
        if addr is not None:
            yield addr


#: file systems any user may mount (fusermount) and name as they like (`-o fsname=`)
USER_MOUNTABLE = ("fuse", "fuseblk")


def _mounted_by_root(fstype: str, options: str) -> bool:
    """A FUSE mount counts only when root mounted it (`user_id=0`, which the kernel
    sets to the mounting user's uid): a user's own FUSE mount may name any "server", and
    must not make an address unblockable (glusterfs, mounted by root, still counts)."""
    if fstype.split(".", 1)[0] not in USER_MOUNTABLE:
        return True
    return "user_id=0" in options.split(",")


def mount_servers(root: Path) -> Iterator[tuple[str, str]]:
    for fstype, source, point, options in _mounts(root):
        if not _mounted_by_root(fstype, options):
            continue
        reason = f"server of the {_printable(fstype)} mount {_printable(point)}"
        seen: list[str] = []
        for addr in (*_option_addresses(options), *_source_addresses(source)):
            if addr not in seen:
                seen.append(addr)
                yield addr, reason


def storage_targets(root: Path) -> Iterator[tuple[str, str]]:
    iscsi = root / "sys/class/iscsi_connection"
    for conn in sorted(_listdir(iscsi)):
        for name in ("persistent_address", "address"):
            addr = _addr(_read(iscsi / conn / name))
            if addr is not None:
                yield addr, f"iSCSI target of {_printable(conn)}"
    nvme = root / "sys/class/nvme"
    for ctrl in sorted(_listdir(nvme)):
        for option in _read(nvme / ctrl / "address").strip().split(","):
            key, _, value = option.partition("=")
            addr = _addr(value) if key == "traddr" else None
            if addr is not None:
                yield addr, f"NVMe-oF target of {_printable(ctrl)}"


def _listdir(path: Path) -> list[str]:
    try:
        return [p.name for p in path.iterdir()]
    except OSError:
        return []


def _extra(pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for text, reason in pairs:
        addr = _addr(text)
        if addr is None:
            try:
                addr = str(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(f"never-block address {text!r} ({reason}) is not an IP "
                                 f"address or CIDR") from None
        yield addr, reason
