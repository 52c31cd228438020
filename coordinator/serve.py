"""`nodewarden-coordinator serve`: the one long-running process behind thin sessions.

sshd runs each agent's forced command, `session --host NAME`; with `[serve] socket` set,
that session hands the agent's stdin and stdout to this process over a Unix socket
(coordinator/handoff.py) and waits. Here every agent's session is served from one event
loop and one store connection, so 1,000 agents cost one Python process, not 1,000
(docs/coordinator.md, "Cost per agent").

Who may hand a session over: the socket is created owner-only, and a peer whose uid is
neither ours nor root's is refused (SO_PEERCRED): the host name it names is trusted
because only sshd's forced command, run as the coordinator's user, can connect.

Fairness: each turn of the loop answers at most one batch (LineReader's max_lines) per
agent, so one agent flooding cannot starve the others; an agent that does not read its
replies stops being read (backpressure: nothing is dropped). One session per host: a
new one replaces the old (the agent reconnected; the old connection is dead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.daemon.watchdog import Notifier, NullNotifier, WatchdogPinger
from agent.report.wire import LineReader, LineTooLong, encode_reply
from coordinator.exits import EXIT_OK, EXIT_REFUSED, EXIT_STORE
from coordinator.handover import (
    bind_listener,
    end_waiter,
    peer_uid,
    receive_handover,
)
from coordinator.replies import error, store_away, unknown_host
from coordinator.session import Session
from coordinator.settings import CoordinatorSettings
from coordinator.store import StoreError, Tx
from coordinator.stores import Store

log = logging.getLogger("nodewarden.coordinator.serve")

#: replies waiting for an agent that does not read them; past this it is not read
MAX_UNSENT = 1 << 20
#: hand-overs accepted in one turn at most
ACCEPT_BATCH = 64


@dataclass(eq=False)
class Conn:
    """One agent's session in serve: its pipes, the waiter's socket, what is unsent."""

    host: str
    session: Session
    fd_in: int
    fd_out: int
    waiter: socket.socket
    reader: LineReader = field(init=False)
    unsent: bytearray = field(default_factory=bytearray)
    code: int = EXIT_OK
    ending: bool = False
    reading: bool = True

    def __post_init__(self) -> None:
        self.reader = LineReader(self.fd_in)


class Server:
    """The event loop: hand-overs on the listening socket, agents' lines on their pipes."""

    def __init__(self, settings: CoordinatorSettings, store: Store,
                 clock: Callable[[], float], notifier: Notifier | None = None) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._notifier = notifier or NullNotifier()
        self._sel = selectors.DefaultSelector()
        self._conns: dict[str, Conn] = {}
        self._again: set[Conn] = set()
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._listener: socket.socket | None = None
        self.path = settings.serve_socket
        #: replies waiting for an agent that does not read them; past this it is not read
        self.max_unsent = MAX_UNSENT

    # ------------------------------------------------------------------ start, stop
    def listen(self) -> None:
        """Bind the socket (owner-only); a live serve already there is an error, a stale
        socket file is replaced."""
        listener = bind_listener(self.path, self._settings.max_sessions)
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, ("listen", None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._notifier.notify(f"READY=1\nSTATUS=serving at {self.path}")
        log.info("serving sessions at %s", self.path)

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        """End every session (code 3: the agents send again to the next serve)."""
        self._notifier.notify("STOPPING=1")
        for conn in list(self._conns.values()):
            conn.code = EXIT_STORE
            self._close(conn)
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            with contextlib.suppress(OSError):
                Path(self.path).unlink()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def sessions(self) -> int:
        return len(self._conns)

    def stalled(self) -> list[str]:
        """The hosts not read now: they do not read their replies (backpressure)."""
        return sorted(c.host for c in self._conns.values() if not c.reading and not c.ending)

    # ------------------------------------------------------------------ the loop
    def run(self, pinger: WatchdogPinger | None = None,
            monotonic: Callable[[], float] = time.monotonic) -> None:
        """Turn until stopped; under systemd's watchdog, ping from this loop only (a
        loop that hangs stops pinging and is restarted)."""
        while not self._stopping:
            timeout = 0.0 if self._again else None
            if pinger is not None and pinger.enabled:
                pinger.tick(monotonic())
                due = pinger.next_due()
                if timeout is None and due is not None:
                    timeout = max(0.0, due - monotonic())
            self.turn(timeout)

    def turn(self, timeout: float | None) -> None:
        """One turn: what is ready, then one more batch of each agent with lines left;
        every agent's batch of the turn decided in one transaction (one commit)."""
        again, self._again = self._again, set()
        readable: list[Conn] = []
        for key, _ in self._sel.select(timeout):
            kind, conn = key.data
            if conn is None:
                self._service(kind, key.fileobj)  # type: ignore[arg-type]
            elif not self._current(conn):
                continue  # closed earlier in this turn (its fd may be another's now)
            elif kind == "waiter":  # the waiter is gone: sshd ended the session
                conn.code = EXIT_OK
                self._close(conn)
            elif kind == "in":
                again.discard(conn)
                readable.append(conn)
            else:
                self._flush(conn)
        batches = []
        for conn, read in [*((c, True) for c in readable), *((c, False) for c in again)]:
            if not self._current(conn):
                continue
            # lines already read go first: a read (64 KiB) can bring thousands of short
            # lines, a turn answers 256, and reading on would buffer a flood without bound
            lines = self._take(conn, read=read and not conn.reader.more)
            if lines is not None:
                batches.append((conn, lines))
        self._answer([(conn, lines) for conn, lines in batches if lines])
        for conn, _ in batches:
            if self._current(conn):
                self._next(conn)

    def _current(self, conn: Conn) -> bool:
        return self._conns.get(conn.host) is conn

    def _service(self, kind: str, sock: socket.socket) -> None:
        if kind == "listen":
            self._accept()
        elif kind == "wake":
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        else:
            self._hello(sock)

    def _accept(self) -> None:
        """The hand-overs waiting, up to ACCEPT_BATCH: a reconnect storm is not taken one
        a turn (a turn costs a commit) while the backlog fills and sessions are refused."""
        assert self._listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: it waits in the backlog
                log.warning("cannot accept a hand-over now: %s", exc)
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        uid = peer_uid(sock)
        if uid not in (0, os.geteuid()):
            log.warning("refused a hand-over from uid %d: only the coordinator's user (sshd's "
                        "forced command) may hand sessions over", uid)
            sock.close()
            return
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, ("hello", None))

    def _hello(self, sock: socket.socket) -> None:
        """The hand-over: the host name and the agent's two pipes."""
        self._sel.unregister(sock)
        handed = receive_handover(sock)
        if handed is None:
            sock.close()
            return
        self._start(handed.host, handed.fd_in, handed.fd_out, sock)

    def _start(self, host: str, fd_in: int, fd_out: int, waiter: socket.socket) -> None:
        try:
            record = self._store.run(lambda tx: tx.host(host))
        except StoreError as exc:
            self._refuse(fd_in, fd_out, waiter, store_away(exc), EXIT_STORE)
            return
        if record is None:
            self._refuse(fd_in, fd_out, waiter, unknown_host(host), EXIT_REFUSED)
            return
        old = self._conns.get(host)
        if old is not None:
            log.info("%s: a new session replaces the old one", host)
            old.code = EXIT_OK
            self._close(old)
        elif len(self._conns) >= self._settings.max_sessions:
            reply = error(None, f"the coordinator is at its limit of "
                          f"{self._settings.max_sessions} sessions; send again later")
            log.warning("%s: refused, at the limit of %d sessions", host,
                        self._settings.max_sessions)
            self._refuse(fd_in, fd_out, waiter, reply, EXIT_STORE)
            return
        conn = Conn(host, Session(record, self._store, self._settings, self._clock),
                    fd_in, fd_out, waiter)
        self._conns[host] = conn
        self._sel.register(fd_in, selectors.EVENT_READ, ("in", conn))
        self._sel.register(waiter, selectors.EVENT_READ, ("waiter", conn))
        log.info("%s: session started (%d held)", host, len(self._conns))

    def _refuse(self, fd_in: int, fd_out: int, waiter: socket.socket,
                reply: dict[str, object], code: int) -> None:
        with contextlib.suppress(OSError):
            os.write(fd_out, encode_reply(reply))
        os.close(fd_in)
        os.close(fd_out)
        end_waiter(waiter, code)

    # ------------------------------------------------------------------ one agent
    def _take(self, conn: Conn, *, read: bool) -> list[bytes | LineTooLong] | None:
        """The agent's next batch of lines (None: its connection failed, it is closed)."""
        try:
            return conn.reader.available(read=read)
        except OSError as exc:
            log.info("%s: its connection failed: %s", conn.host, exc)
            self._close(conn)
            return None

    def _answer(self, batches: list[tuple[Conn, list[bytes | LineTooLong]]]) -> None:
        """Decide every batch in one transaction; when that fails on a bug, each agent's
        batch alone (Session.reply_to finds the line); the store away ends them all."""
        if not batches:
            return
        marks = [conn.session.checkpoint() for conn, _ in batches]

        def work(tx: Tx) -> list[list[dict[str, Any]]]:
            return [conn.session.answer_in(tx, lines) for conn, lines in batches]

        try:
            answers = self._store.run(work)
        except StoreError as exc:
            log.error("store unavailable: %s", exc)
            for conn, _ in batches:
                conn.unsent += encode_reply(store_away(exc))
                conn.code, conn.ending = EXIT_STORE, True
            return
        except Exception:
            log.exception("a turn's transaction failed; each agent's lines alone")
            for (conn, _), mark in zip(batches, marks, strict=True):
                conn.session.rollback(mark)
            answers = [self._alone(conn, lines) for conn, lines in batches]
        for (conn, _), replies in zip(batches, answers, strict=True):
            for reply in replies:
                conn.unsent += encode_reply(reply)
            if conn.session.ended and not conn.ending:
                conn.code, conn.ending = EXIT_REFUSED, True

    def _alone(self, conn: Conn, lines: list[bytes | LineTooLong]) -> list[dict[str, Any]]:
        try:
            return conn.session.reply_to(lines)
        except StoreError as exc:
            conn.code, conn.ending = EXIT_STORE, True
            return [store_away(exc)]

    def _next(self, conn: Conn) -> None:
        """After a batch: the end of its input ends it."""
        if conn.reader.eof:
            conn.ending = True
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        """Write what is unsent; wait for the pipe when it is full; stop reading an
        agent that does not read (and read it again once it does)."""
        while conn.unsent:
            try:
                n = os.write(conn.fd_out, conn.unsent)
            except BlockingIOError:
                break
            except OSError as exc:
                log.info("%s: its connection is gone: %s", conn.host, exc)
                self._close(conn)
                return
            del conn.unsent[:n]
        if conn.ending and not conn.unsent:
            self._close(conn)
            return
        self._watch_out(conn, bool(conn.unsent))
        go_on = not conn.ending and len(conn.unsent) < self.max_unsent
        self._watch_in(conn, go_on)
        if go_on and conn.reader.more:  # lines already read wait for the next turn
            self._again.add(conn)

    def _watch_out(self, conn: Conn, on: bool) -> None:
        registered = conn.fd_out in self._sel.get_map()
        if on and not registered:
            self._sel.register(conn.fd_out, selectors.EVENT_WRITE, ("out", conn))
        elif not on and registered:
            self._sel.unregister(conn.fd_out)

    def _watch_in(self, conn: Conn, on: bool) -> None:
        if on != conn.reading:
            conn.reading = on
            if on:
                self._sel.register(conn.fd_in, selectors.EVENT_READ, ("in", conn))
            else:
                self._sel.unregister(conn.fd_in)

    def _close(self, conn: Conn) -> None:
        if not self._current(conn):
            return
        del self._conns[conn.host]
        self._again.discard(conn)
        for fd in (conn.fd_in, conn.fd_out):
            if fd in self._sel.get_map():
                self._sel.unregister(fd)
            os.close(fd)
        self._sel.unregister(conn.waiter)
        end_waiter(conn.waiter, conn.code)
        log.info("%s: session ended (code %d, %d held)", conn.host, conn.code,
                 len(self._conns))


