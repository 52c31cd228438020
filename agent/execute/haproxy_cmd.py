"""Talk to HAProxy's runtime API (admin socket) without socat, as an argv plans can show.

    python3 -m agent.execute.haproxy_cmd send SOCKET "set server be/srv state drain"
    python3 -m agent.execute.haproxy_cmd expect SOCKET be/srv drain|maint|ready
    python3 -m agent.execute.haproxy_cmd healthy-peer SOCKET be/srv

`send` exits 1 when a `set`/`enable`/`disable` command gets an error text back (HAProxy
answers those with an empty line on success). `expect` and `healthy-peer` read
`show servers state BACKEND`: exit 0 when the condition holds, 1 when it does not.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

#: srv_admin_state bits (haproxy include/haproxy/server-t.h)
ADMF_FMAINT, ADMF_IMAINT, ADMF_CMAINT = 0x01, 0x02, 0x04
ADMF_FDRAIN, ADMF_IDRAIN, ADMF_RMAINT, ADMF_HMAINT = 0x08, 0x10, 0x20, 0x40
MAINT_MASK = ADMF_FMAINT | ADMF_IMAINT | ADMF_CMAINT | ADMF_RMAINT | ADMF_HMAINT
DRAIN_MASK = ADMF_FDRAIN | ADMF_IDRAIN
#: srv_op_state
OP_RUNNING = 2

WRITE_VERBS = ("set", "enable", "disable", "add", "del", "clear", "shutdown")


@dataclass(frozen=True)
class ServerState:
    backend: str
    server: str
    op_state: int
    admin_state: int
    weight: int

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & DRAIN_MASK)

    @property
    def in_maint(self) -> bool:
        return bool(self.admin_state & MAINT_MASK)

    @property
    def healthy(self) -> bool:
        """Up, taking traffic: running, neither draining nor in maintenance, weight > 0."""
        return (self.op_state == OP_RUNNING and not self.admin_state and self.weight > 0)


def query(socket_path: str, command: str, timeout_s: float = 5.0) -> str:
    """Send one command, read the answer until HAProxy closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(socket_path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse `show servers state`: a version line, a `# field...` header, one row each."""
    header: list[str] = []
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            header = line[1:].split()
            continue
        cols = line.split()
        if not header or len(cols) < len(header) - 4:  # trailing fields may be absent
            continue
        row = dict(zip(header, cols, strict=False))
        try:
            out.append(ServerState(
                backend=row["be_name"], server=row["srv_name"],
                op_state=int(row["srv_op_state"]), admin_state=int(row["srv_admin_state"]),
                weight=int(row["srv_uweight"]),
            ))
        except (KeyError, ValueError):
            continue
    return out


def split_server(name: str) -> tuple[str, str]:
    backend, sep, server = name.partition("/")
    if not sep or not backend or not server:
        raise ValueError(f"{name!r} is not BACKEND/SERVER")
    return backend, server


def servers(socket_path: str, backend: str) -> list[ServerState]:
    return [s for s in parse_servers_state(query(socket_path, f"show servers state {backend}"))
            if s.backend == backend]


def healthy_peers(states: Sequence[ServerState], server: str) -> list[ServerState]:
    return [s for s in states if s.server != server and s.healthy]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m agent.execute.haproxy_cmd")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("send", help="send one runtime API command, print the answer")
    p.add_argument("socket")
    p.add_argument("command")
    p = sub.add_parser("expect", help="exit 0 when BACKEND/SERVER is in the admin state")
    p.add_argument("socket")
    p.add_argument("server")
    p.add_argument("state", choices=("drain", "maint", "ready"))
    p = sub.add_parser("healthy-peer", help="exit 0 when another server of the backend is UP")
    p.add_argument("socket")
    p.add_argument("server")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "send":
            answer = query(args.socket, args.command)
            sys.stdout.write(answer)
            if args.command.split()[0] in WRITE_VERBS and answer.strip():
                print(f"haproxy refused {args.command!r}: {answer.strip()}", file=sys.stderr)
                return 1
            return 0
        backend, server = split_server(args.server)
        states = servers(args.socket, backend)
    except (OSError, ValueError) as exc:
        print(f"haproxy {args.socket}: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "expect":
        mine = [s for s in states if s.server == server]
        if not mine:
            print(f"no server {args.server} in {args.socket}", file=sys.stderr)
            return 1
        s = mine[0]
        ok = {"drain": s.draining, "maint": s.in_maint,
              "ready": not s.draining and not s.in_maint}[args.state]
        print(f"{args.server}: op_state={s.op_state} admin_state={s.admin_state}")
        return 0 if ok else 1
    peers = healthy_peers(states, server)
    print(f"{len(peers)} healthy peer(s) of {args.server}: "
          + (", ".join(p.server for p in peers) or "none"))
    return 0 if peers else 1


if __name__ == "__main__":
    sys.exit(main())
