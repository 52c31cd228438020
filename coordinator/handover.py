"""serve's side of the hand-over (coordinator/handoff.py is the session's side): the
listening socket, who may connect, and what a hand-over carries.

The socket is created owner-only in a directory of its own; a peer whose uid is neither
serve's nor root's is refused (SO_PEERCRED). The host name a hand-over names is trusted
because only sshd's forced command, run as the coordinator's user, can connect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from coordinator.settings import NAME

log = logging.getLogger("nodewarden.coordinator.serve")

#: the hand-over message (host name, JSON) is tiny
MAX_HELLO = 1024


class ServeError(Exception):
    """serve cannot start (its reason is for the operator)."""


@dataclass(frozen=True)
class Handover:
    host: str
    fd_in: int
    fd_out: int


def bind_listener(path: str, max_sessions: int) -> socket.socket:
    """The listening socket (owner-only); a live serve already there is an error, a
    stale socket file is replaced."""
    if not path:
        raise ServeError("[serve] socket is \"\": sessions run in their own processes")
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        Path(path).unlink(missing_ok=True)
    else:
        raise ServeError(f"another serve is running at {path}")
    finally:
        probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    except OSError as exc:
        listener.close()
        raise ServeError(f"cannot listen at {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(old)
    raise_open_files(3 * max_sessions + 64)
    listener.listen(512)
    listener.setblocking(False)
    return listener


def receive_handover(sock: socket.socket) -> Handover | None:
    """The host and pipes a session handed over (non-blocking from here), or None (a
    probe that connected and went, or something malformed, logged)."""
    try:
        data, fds, _, _ = socket.recv_fds(sock, MAX_HELLO, 2)
    except OSError as exc:
        log.warning("a hand-over failed: %s", exc)
        return None
    host = host_of(data)
    if not data and not fds:  # connected and went (a probe: is serve up?)
        return None
    if len(fds) != 2 or host is None:
        for fd in fds:
            os.close(fd)
        log.warning("refused a malformed hand-over (%d descriptors, %r)", len(fds),
                    data[:80])
        return None
    for fd in fds:
        os.set_blocking(fd, False)
    return Handover(host, fds[0], fds[1])


def raise_open_files(need: int) -> None:
    """Each session holds three descriptors: raise the soft limit to what max_sessions
    needs (up to the hard limit), and say so when even that is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as exc:  # a sandbox may forbid it: set LimitNOFILE=
            log.warning("cannot raise the open-files limit to %d: %s", want, exc)
    if hard != resource.RLIM_INFINITY and hard < need:
        log.warning("open files are limited to %d: fewer than the %d that [serve] "
                    "max_sessions needs (raise LimitNOFILE=)", hard, need)


def end_waiter(waiter: socket.socket, code: int) -> None:
    with contextlib.suppress(OSError):
        waiter.send(f"{code}\n".encode())
    waiter.close()


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def host_of(data: bytes) -> str | None:
    """The host name a hand-over names (sshd's forced command put it there)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # `[` a thousand times is a RecursionError
        return None
    host = doc.get("host") if isinstance(doc, dict) else None
    return host if isinstance(host, str) and NAME.fullmatch(host) else None
