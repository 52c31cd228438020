"""The thin session: what sshd's forced command runs when `serve` is configured.

`session --host NAME` connects to serve's Unix socket and passes it the agent's
connection, its stdin and stdout, with the host name (SCM_RIGHTS). Then it becomes a
waiter, a POSIX shell that reads one line from the socket, the session's exit code, and
exits with it: sshd ends the SSH session when the waiter exits. What stays per agent is
sshd's own processes and this shell (a few hundred KiB), not a Python process of 14-19
MiB (docs/coordinator.md, "Cost per agent").

When serve cannot be reached, the agent gets an `error` reply saying so (nothing was
recorded; its spool keeps every message for the next session) and the operator a line
on stderr, and the session exits 3 (store unavailable: the coordinator is down).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from typing import Any

from agent.report.wire import encode_reply
from coordinator.exits import EXIT_REFUSED, EXIT_STORE
from coordinator.handover import peer_uid
from coordinator.replies import unknown_host
from coordinator.settings import NAME

#: the waiter: serve writes the exit code and a newline, or closes the socket (it was
#: stopped or died: 3, as for a store that is away)
WAITER = 'read -r code <&3; exit "${code:-3}"'
#: how long connecting and handing over may take (serve answers in well under a second)
HANDOFF_TIMEOUT_S = 30.0


def hand_off(socket_path: str, host: str) -> int:
    """Give this process's stdin and stdout to serve; on success it never returns (the
    process becomes the waiter)."""
    if not NAME.fullmatch(host):
        _reply(unknown_host(host))
        return EXIT_REFUSED
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(HANDOFF_TIMEOUT_S)
    try:
        sock.connect(socket_path)
        uid = peer_uid(sock)  # as serve checks ours: the agent's pipes go to serve only
        if uid not in (0, os.geteuid()):
            raise PermissionError(errno.EPERM, f"uid {uid} listens there, not the "
                                  "coordinator's user")
        socket.send_fds(sock, [json.dumps({"host": host}).encode() + b"\n"], [0, 1])
    except OSError as exc:
        sock.close()
        return unreachable(socket_path, exc)
    become_waiter(sock)
    raise AssertionError("unreachable: execv returned")  # pragma: no cover


def become_waiter(sock: socket.socket) -> None:
    """Only serve holds the agent's pipes from here: stdin and stdout become /dev/null
    (so the SSH session ends the moment serve lets go of them), the socket fd 3."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if sock.fileno() != 3:
        os.dup2(sock.fileno(), 3)
    os.set_inheritable(3, True)  # dup2 onto itself would leave close-on-exec set
    os.set_blocking(3, True)  # a socket with a timeout is non-blocking underneath
    os.execv("/bin/sh", ["nodewarden-coordinator-session", "-c", WAITER])  # noqa: S606


def unreachable(socket_path: str, exc: OSError) -> int:
    reason = exc.strerror or type(exc).__name__
    print(f"nodewarden-coordinator: session: cannot reach serve at {socket_path} ({reason}): "
          "is `nodewarden-coordinator serve` running?", file=sys.stderr)
    reply = {"type": "error", "id": None,
             "reason": f"coordinator unavailable: its serve process cannot be reached "
                       f"({reason}); nothing was recorded, send again later"}
    _reply(reply)
    return EXIT_STORE


def _reply(reply: dict[str, Any]) -> None:
    sys.stdout.buffer.write(encode_reply(reply))
    sys.stdout.buffer.flush()
