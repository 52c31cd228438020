"""The reporter: the agent's messages to the coordinator, over SSH, at least once.

The daemon's loop only `send`s: the message goes to the durable spool (agent/report/
spool.py) and the reporter's thread is woken, so the loop never waits on the network.
The thread connects with paramiko:
- the coordinator's host key is pinned: its `known_hosts` file is loaded, and an
  unknown or changed key is refused, never added;
- the agent's own key, with connect and reply timeouts and keepalives.
It says hello, then sends what waits in the spool in order, up to `window` messages
ahead of their answers. The coordinator answers each message in order, and an answered
message leaves the spool. A message the coordinator refused (`error`) leaves too,
logged: sending it again would get the same refusal.

A lost connection, or no answer within `reply_timeout_s`, ends the session. What was not
answered is sent again on the next one; the coordinator keeps each id once, so nothing is
duplicated (docs/protocol.md). Reconnects wait with tenacity: exponential, with jitter,
capped at `backoff_max_s`, and the wait restarts after a session that worked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential
from tenacity.stop import stop_base

from agent.report.settings import ReporterSettings
from agent.report.spool import Spool, SpoolStats
from agent.report.wire import PROTO, Message, encode

log = logging.getLogger(__name__)


class SessionLost(Exception):
    """The session ended before its work was done (a reason for the log and status)."""


@dataclass(frozen=True)
class ReporterStatus:
    connected: bool
    spool: SpoolStats
    last_ack: float | None
    last_error: str
    sessions: int
    hello: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"connected": self.connected, "spool_depth": self.spool.depth,
                "spool_bytes": self.spool.bytes, "dropped": dict(self.spool.dropped),
                "last_ack": self.last_ack, "last_error": self.last_error,
                "sessions": self.sessions}


class _StopWhen(stop_base):
    def __init__(self, done: Callable[[], bool]) -> None:
        self.done = done

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.done()


class Reporter:
    """The spool's messages to the coordinator, from a thread of its own."""

    def __init__(self, settings: ReporterSettings, spool: Spool, hello: Mapping[str, Any],
                 wall: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._spool = spool
        self._hello = dict(hello)
        self._wall = wall
        self._lock = threading.Lock()  # the spool: put by the loop, drained by the thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False
        #: requests waiting for their answer: id -> (event, the answer once it came)
        self._waiters: dict[str, tuple[threading.Event, list[Mapping[str, Any]]]] = {}
        self._last_ack: float | None = None
        self._last_error = ""
        self._sessions = 0

    # ------------------------------------------------------------------ the loop's side
    def send(self, kind: str, fields: Mapping[str, Any]) -> str | None:
        """Spool a message (durably, for the kinds that must survive a crash); its id,
        or None when the disk refused it (logged; the audit log still has the event)."""
        try:
            with self._lock:
                msg_id = self._spool.put(kind, fields)
        except (OSError, ValueError) as exc:
            log.error("reporter: %s not spooled: %s", kind, exc)
            return None
        self._wake.set()
        return msg_id

    def request(self, kind: str, fields: Mapping[str, Any], timeout_s: float
                ) -> Mapping[str, Any] | None:
        """Send a message and wait for its answer; None when none came in `timeout_s` (or
        it could not be spooled). The caller's thread waits; the reporter's does the work."""
        done: tuple[threading.Event, list[Mapping[str, Any]]] = (threading.Event(), [])
        with self._lock:
            try:
                msg_id = self._spool.put(kind, fields)
            except (OSError, ValueError) as exc:
                log.error("reporter: %s not spooled: %s", kind, exc)
                return None
            self._waiters[msg_id] = done
        self._wake.set()
        done[0].wait(timeout_s)
        with self._lock:
            self._waiters.pop(msg_id, None)
            return done[1][0] if done[1] else None

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self) -> ReporterStatus:
        with self._lock:
            stats = self._spool.stats()
        return ReporterStatus(self._connected, stats, self._last_ack, self._last_error,
                              self._sessions)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nodewarden-reporter",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._lock:
            self._spool.close()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        import paramiko  # the heavy one (docs/facts.md): only an agent with a coordinator

        lost = (OSError, EOFError, paramiko.SSHException, SessionLost)
        while not self._stop.is_set():
            retrying = Retrying(
                retry=retry_if_exception_type(lost),
                wait=wait_random_exponential(multiplier=0.5, max=self._settings.backoff_max_s),
                stop=_StopWhen(self._stop.is_set), sleep=self._pause,
                before_sleep=self._note_failure, retry_error_callback=lambda _s: None)
            try:
                retrying(self._session, paramiko)
            except Exception as exc:  # a bug must not end reporting: log it, wait, go on
                log.exception("reporter: unexpected failure")
                self._last_error = _reason(exc)
                self._stop.wait(self._settings.backoff_max_s)

    def _pause(self, seconds: float) -> None:
        """tenacity's sleep: cut short by stop()."""
        self._stop.wait(seconds)

    def _note_failure(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._connected = False
        reason = _reason(exc)
        if reason != self._last_error:
            log.warning("reporter: %s; trying again", reason)
        self._last_error = reason

    def _session(self, paramiko: Any) -> None:
        s = self._settings
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(s.known_hosts))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(s.host, port=s.port, username=s.user, key_filename=str(s.key_file),
                           timeout=s.connect_timeout_s, banner_timeout=s.connect_timeout_s,
                           auth_timeout=s.connect_timeout_s, look_for_keys=False,
                           allow_agent=False)
            transport = client.get_transport()
            transport.set_keepalive(int(s.keepalive_s))
            channel = transport.open_session(timeout=s.connect_timeout_s)
            channel.settimeout(0.2)
            channel.exec_command("session")
            _Conversation(self, channel).run()
        finally:
            self._connected = False
            client.close()

    def _on_connected(self) -> None:
        self._connected = True
        self._sessions += 1
        if self._last_error:
            log.info("reporter: connected to %s again", self._settings.host)
        self._last_error = ""

    def _on_answer(self, msg_id: str, reply: Mapping[str, Any]) -> None:
        with self._lock:
            sent = self._spool.answered(msg_id)
            waiter = self._waiters.get(msg_id)
            if waiter is not None:
                waiter[1].append(reply)
                waiter[0].set()
        if sent is None:
            return
        self._last_ack = self._wall()
        if reply.get("type") == "error":
            log.warning("reporter: the coordinator refused %s: %s", msg_id,
                        str(reply.get("reason", ""))[:300])
        elif (waiter is None and sent.type == "lease-request"
              and reply.get("type") == "lease-grant"):
            # granted after the asker gave up (no answer in time means no): give it back
            log.warning("reporter: lease %s came too late for %s; releasing it",
                        reply.get("lease"), sent.get("action"))
            self.send("lease-release", {"lease": reply.get("lease")})

    def _pending(self, limit: int) -> list[Message]:
        with self._lock:
            return self._spool.pending(limit)


class _Conversation:
    """One session's exchange: hello, then the spool in order, a window ahead."""

    def __init__(self, reporter: Reporter, channel: Any) -> None:
        self._r = reporter
        self._channel = channel
        self._buffer = b""
        self._outstanding: deque[tuple[str, float]] = deque()

    def run(self) -> None:
        r = self._r
        hello_id = f"{r._spool.token}-hello-{int(r._wall() * 1000)}"
        self._write(Message("hello", hello_id, {"proto": PROTO, **r._hello}))
        reply = self._reply(deadline=time.monotonic() + r._settings.reply_timeout_s)
        if reply.get("type") != "ack" or reply.get("id") != hello_id:
            raise SessionLost(f"the coordinator refused hello: {reply.get('reason', reply)}")
        r._on_connected()
        while not r._stop.is_set():
            self._fill()
            self._drain()

    def _fill(self) -> None:
        window = self._r._settings.window
        pending = self._r._pending(window)
        for msg in pending[len(self._outstanding):]:
            self._write(msg)
            self._outstanding.append((msg.id, time.monotonic()))

    def _drain(self) -> None:
        """Read what came; wait a little when nothing is due."""
        if not self._outstanding:
            self._r._wake.wait(0.5)
            self._r._wake.clear()
            if self._channel.exit_status_ready() or self._channel.closed:
                raise SessionLost("the coordinator closed the session")
            return
        oldest = self._outstanding[0][1]
        reply = self._reply(deadline=oldest + self._r._settings.reply_timeout_s)
        msg_id = reply.get("id")
        if msg_id != self._outstanding[0][0]:
            raise SessionLost(f"an answer out of order: {str(msg_id)[:80]}")
        self._outstanding.popleft()
        self._r._on_answer(msg_id, reply)

    def _write(self, msg: Message) -> None:
        self._channel.sendall(encode(msg))

    def _reply(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if time.monotonic() > deadline:
                raise SessionLost("no answer in time")
            try:
                chunk = self._channel.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise SessionLost("the coordinator closed the session")
            self._buffer += chunk
            if len(self._buffer) > (1 << 20) + 1:
                raise SessionLost("an answer over the line limit")
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            raise SessionLost("an answer that is not JSON") from None
        if not isinstance(reply, dict):
            raise SessionLost("an answer that is not a JSON object")
        return reply


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown failure"
    name = type(exc).__name__
    if name == "BadHostKeyException":
        return ("the coordinator's host key has CHANGED: refused, nothing sent (check "
                "known_hosts)")
    text = str(exc)
    if "not found in known_hosts" in text:
        return "the coordinator's host key is not in known_hosts: refused, nothing sent"
    return f"{name}: {text[:200]}" if text else name
