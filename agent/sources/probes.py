"""Protocol probes: is the mail service answering the way a client needs it to?

`run_probe(settings, clock)` talks one protocol (IMAP, POP3, SMTP, HTTP(S), plain TCP) to
one endpoint and returns a ProbeResult. It never raises: every failure, including a bug
in here, becomes `ok=False` with a detail that names the step that failed
("imap: timeout after 2.0s reading greeting").

Bounds, because a probe must not be the thing that hangs: the connect timeout bounds
the TCP connect; every later step (TLS handshake, reading one reply) has its own
deadline of `read_timeout_s`, enforced across recv calls so a server trickling a byte a
second cannot stretch it; a reply line is capped at MAX_LINE_BYTES, a multi-line reply
at MAX_REPLY_LINES and an HTTP body at MAX_BODY_BYTES.

`ProbeScheduler` runs the configured probes in worker threads on their own interval and
hands results back through a queue plus a wake-up pipe the daemon's selectors loop
watches, so a hanging probe never blocks the loop (DESIGN.md "The loop never blocks").
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.clock import Clock
from agent.model import ProbeResult
from agent.sources.settings import ProbeSettings

if TYPE_CHECKING:  # ssl and http.client cost ~4.5 MiB RSS: imported when a probe runs
    import ssl

MAX_LINE_BYTES = 8192
MAX_REPLY_LINES = 200
MAX_BODY_BYTES = 1024 * 1024
MAX_BANNER_BYTES = 65536
_RECV_CHUNK = 4096
_USER_AGENT = "nodewarden-probe/1"


class ProbeFailed(Exception):
    """A probe step failed; `str(exc)` is the detail without the `kind:` prefix."""


class _StepTimeout(Exception):
    """The current step's deadline passed."""


# --------------------------------------------------------------------------- connection
class _Conn:
    """A socket with a per-step deadline, a read buffer and bounded line reads."""

    def __init__(self, sock: socket.socket, clock: Clock, read_timeout_s: float) -> None:
        self.sock: socket.socket = sock
        self.clock = clock
        self.read_timeout_s = read_timeout_s
        self.step = "connecting"
        self._deadline = clock.monotonic() + read_timeout_s
        self._buf = b""

    def begin(self, step: str) -> None:
        """Start a step: a new deadline of read_timeout_s, and the name failures carry."""
        self.step = step
        self._deadline = self.clock.monotonic() + self.read_timeout_s

    def _arm(self) -> None:
        remaining = self._deadline - self.clock.monotonic()
        if remaining <= 0:
            raise _StepTimeout
        self.sock.settimeout(remaining)

    def send(self, data: bytes) -> None:
        self._arm()
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise _StepTimeout from exc

    def recv(self, limit: int = _RECV_CHUNK) -> bytes:
        """Buffered bytes first, then at most `limit` from the socket (b"" = closed)."""
        if self._buf:
            out, self._buf = self._buf[:limit], self._buf[limit:]
            return out
        self._arm()
        try:
            return self.sock.recv(limit)
        except TimeoutError as exc:
            raise _StepTimeout from exc

    def readline(self) -> str:
        """One CRLF/LF-terminated line, decoded leniently, without its terminator."""
        too_long = f"reply line longer than {MAX_LINE_BYTES} bytes while {self.step}"
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE_BYTES:
                raise ProbeFailed(too_long)
            self._arm()
            try:
                chunk = self.sock.recv(_RECV_CHUNK)
            except TimeoutError as exc:
                raise _StepTimeout from exc
            if not chunk:
                raise ProbeFailed(f"connection closed by server while {self.step}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        if len(line) > MAX_LINE_BYTES:
            raise ProbeFailed(too_long)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def start_tls(self, settings: ProbeSettings) -> None:
        """Wrap the socket in TLS (after STARTTLS, or at once for implicit TLS)."""
        if self._buf:
            # Bytes sent before the handshake would be injected plaintext (CVE-2011-0411).
            raise ProbeFailed(f"server sent data before the TLS handshake while {self.step}")
        context = tls_context(settings.verify_tls)
        self.begin("doing TLS handshake")
        self._arm()
        try:
            self.sock = context.wrap_socket(
                self.sock, server_hostname=settings.server_name or settings.host
            )
        except TimeoutError as exc:
            raise _StepTimeout from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def tls_context(verify: bool) -> ssl.SSLContext:
    """The system's default TLS context; `verify=False` checks neither chain nor name."""
    import ssl

    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# --------------------------------------------------------------------------- protocols
def _read_password(settings: ProbeSettings) -> tuple[str, str] | None:
    """(user, password) read now from the canary password file, or None without login."""
    if settings.login_user is None or settings.login_password_file is None:
        return None
    path = Path(settings.login_password_file)
    try:
        secret = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProbeFailed(f"cannot read login_password_file {path}: {reason}") from None
    return settings.login_user, secret.rstrip("\r\n")


def _no_line_breaks(user: str, password: str, proto: str) -> None:
    for what, value in (("login_user", user), ("password", password)):
        if any(c in value for c in "\r\n\0"):
            raise ProbeFailed(f"{what} contains CR, LF or NUL, which {proto} cannot send")


def _imap_astring(value: str) -> tuple[bytes, bytes | None]:
    """IMAP quoted string, or a literal `{n}` plus its bytes when quoting cannot carry it."""
    raw = value.encode("utf-8")
    if raw.isascii() and not any(c in raw for c in b"\r\n\0"):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', None
    return b"{%d}" % len(raw), raw


def _imap_tagged(conn: _Conn, tag: str) -> str:
    """Read to the tagged completion line, skipping (a bounded number of) untagged ones."""
    for _ in range(MAX_REPLY_LINES):
        line = conn.readline()
        if line.startswith(tag + " "):
            return line
    raise ProbeFailed(f"more than {MAX_REPLY_LINES} reply lines while {conn.step}")


def _imap_command(conn: _Conn, tag: str, verb: str, args: Sequence[str] = ()) -> str:
    """Send one command (with synchronising literals where needed); the tagged reply."""
    pending = f"{tag} {verb}".encode()
    for arg in args:
        head, literal = _imap_astring(arg)
        pending += b" " + head
        if literal is not None:
            conn.send(pending + b"\r\n")
            line = conn.readline()
            if not line.startswith("+"):
                raise ProbeFailed(f"server refused a literal while {conn.step}: {_clip(line)}")
            pending = literal
    conn.send(pending + b"\r\n")
    return _imap_tagged(conn, tag)


def _probe_imap(conn: _Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
    conn.begin("reading greeting")
    greeting = conn.readline()
    if greeting.startswith("* BYE"):
        raise ProbeFailed(f"server refused the connection: {_clip(greeting)}")
    if not greeting.startswith(("* OK", "* PREAUTH")):
        raise ProbeFailed(f"unexpected greeting: {_clip(greeting)}")
    if settings.tls == "starttls":
        conn.begin("waiting for STARTTLS reply")
        reply = _imap_command(conn, "a1", "STARTTLS")
        if not reply.startswith("a1 OK"):
            raise ProbeFailed(f"STARTTLS refused: {_clip(reply)}")
        conn.start_tls(settings)
    if login is not None:
        conn.begin("waiting for LOGIN reply")
        reply = _imap_command(conn, "a2", "LOGIN", login)
        if not reply.startswith("a2 OK"):
            raise ProbeFailed(f"login rejected: {_clip(reply)}")
    _polite(conn, lambda: _imap_command(conn, "a3", "LOGOUT"))
    return "greeting OK" + (", login OK" if login else "")


def _pop3_ok(conn: _Conn, what: str) -> str:
    line = conn.readline()
    if not line.startswith("+OK"):
        raise ProbeFailed(f"{what}: {_clip(line)}")
    return line


def _probe_pop3(conn: _Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
    conn.begin("reading greeting")
    _pop3_ok(conn, "unexpected greeting")
    if settings.tls == "starttls":
        conn.begin("waiting for STLS reply")
        conn.send(b"STLS\r\n")
        _pop3_ok(conn, "STLS refused")
        conn.start_tls(settings)
    if login is not None:
        user, password = login
        _no_line_breaks(user, password, "POP3")
        conn.begin("waiting for USER reply")
        conn.send(f"USER {user}\r\n".encode())
        _pop3_ok(conn, "login rejected")
        conn.begin("waiting for PASS reply")
        conn.send(f"PASS {password}\r\n".encode())
        _pop3_ok(conn, "login rejected")

    def quit_() -> None:
        conn.send(b"QUIT\r\n")
        conn.readline()

    _polite(conn, quit_)
    return "greeting OK" + (", login OK" if login else "")


def _smtp_reply(conn: _Conn) -> tuple[int, list[str]]:
    """One (possibly multi-line) SMTP reply: its code and the text of each line."""
    texts: list[str] = []
    for _ in range(MAX_REPLY_LINES):
        line = conn.readline()
        code = line[:3]
        if not (code.isdigit() and line[3:4] in ("", " ", "-")):
            raise ProbeFailed(f"malformed reply while {conn.step}: {_clip(line)}")
        texts.append(line[4:])
        if line[3:4] != "-":
            return int(code), texts
    raise ProbeFailed(f"more than {MAX_REPLY_LINES} reply lines while {conn.step}")


def _smtp_expect(conn: _Conn, want: int, what: str) -> list[str]:
    code, texts = _smtp_reply(conn)
    if code != want:
        raise ProbeFailed(f"{what}: {code} {_clip(texts[0] if texts else '')}")
    return texts


def _ehlo_name(sock: socket.socket) -> str:
    """An address literal for EHLO: correct without DNS (RFC 5321 section 4.1.3)."""
    try:
        addr = str(sock.getsockname()[0])
    except OSError:
        return "[127.0.0.1]"
    return f"[IPv6:{addr}]" if ":" in addr else f"[{addr}]"


def _probe_smtp(conn: _Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
    conn.begin("reading greeting")
    _smtp_expect(conn, 220, "unexpected greeting")
    ehlo = f"EHLO {_ehlo_name(conn.sock)}\r\n".encode()
    conn.begin("waiting for EHLO reply")
    conn.send(ehlo)
    extensions = {t.split(" ", 1)[0].upper(): t for t in _smtp_expect(conn, 250, "EHLO refused")}
    if settings.tls == "starttls":
        if "STARTTLS" not in extensions:
            raise ProbeFailed("server does not offer STARTTLS")
        conn.begin("waiting for STARTTLS reply")
        conn.send(b"STARTTLS\r\n")
        _smtp_expect(conn, 220, "STARTTLS refused")
        conn.start_tls(settings)
        conn.begin("waiting for EHLO reply after STARTTLS")
        conn.send(ehlo)
        texts = _smtp_expect(conn, 250, "EHLO refused")
        extensions = {t.split(" ", 1)[0].upper(): t for t in texts}
    if login is not None:
        user, password = login
        _no_line_breaks(user, password, "SMTP AUTH PLAIN")
        if "PLAIN" not in extensions.get("AUTH", "").upper().split():
            raise ProbeFailed("server does not offer AUTH PLAIN")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
        conn.begin("waiting for AUTH reply")
        conn.send(f"AUTH PLAIN {token}\r\n".encode())
        _smtp_expect(conn, 235, "login rejected")

    def quit_() -> None:
        conn.send(b"QUIT\r\n")
        _smtp_reply(conn)

    _polite(conn, quit_)
    return "greeting 220" + (", login OK" if login else "")


Buffer = bytearray | memoryview


class _DeadlineRaw(io.RawIOBase):
    """Lets http.client parse a response read through _Conn's deadlines."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.conn.recv(len(view))
        view[: len(data)] = data
        return len(data)


class _SockShim:
    """The one method http.client.HTTPResponse needs from a socket."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineRaw(self.conn))


def _host_header(settings: ProbeSettings) -> str:
    host = settings.server_name or settings.host
    if ":" in host:
        host = f"[{host}]"
    default = 443 if settings.tls == "tls" else 80
    return host if settings.port == default else f"{host}:{settings.port}"


def _probe_http(conn: _Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
    import http.client

    del login  # HTTP probes do not log in (docs/probes.md)
    path = settings.http_path if settings.http_path.startswith("/") else "/" + settings.http_path
    if any(c in path for c in "\r\n "):
        raise ProbeFailed("path contains a space, CR or LF")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {_host_header(settings)}\r\n"
        f"User-Agent: {_USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    conn.begin("sending request")
    conn.send(request.encode("ascii", "replace"))
    conn.begin("reading response headers")
    response = http.client.HTTPResponse(_SockShim(conn), method="GET")  # type: ignore[arg-type]
    try:
        response.begin()
    except http.client.RemoteDisconnected:
        raise ProbeFailed(f"connection closed by server while {conn.step}") from None
    except http.client.HTTPException as exc:
        raise ProbeFailed(f"malformed response while {conn.step}: {type(exc).__name__}") from None
    if response.status != settings.expect_status:
        raise ProbeFailed(
            f"status {response.status} {_clip(response.reason)}, "
            f"expected {settings.expect_status}"
        )
    if settings.expect_text is None:
        return f"status {response.status}"
    conn.begin("reading response body")
    try:
        body = response.read(MAX_BODY_BYTES)
    except http.client.IncompleteRead as exc:
        body = exc.partial
    except http.client.HTTPException as exc:
        raise ProbeFailed(f"malformed body while {conn.step}: {type(exc).__name__}") from None
    if settings.expect_text not in body.decode("utf-8", "replace"):
        raise ProbeFailed(
            f"status {response.status} but expect_text {settings.expect_text!r} not in "
            f"the first {len(body)} bytes of the body"
        )
    return f"status {response.status}, expect_text found"


def _probe_tcp(conn: _Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
    del login
    if settings.expect_text is None:
        return "connected"
    conn.begin("reading banner")
    want = settings.expect_text.encode("utf-8")
    seen = b""
    while want not in seen:
        if len(seen) > MAX_BANNER_BYTES:
            raise ProbeFailed(f"expect_text not in the first {MAX_BANNER_BYTES} bytes")
        chunk = conn.recv()
        if not chunk:
            raise ProbeFailed(f"connection closed before expect_text {settings.expect_text!r}")
        seen += chunk
    return "banner matched"


def _polite(conn: _Conn, goodbye: Callable[[], object]) -> None:
    """Say goodbye (LOGOUT/QUIT) so servers log a clean session; its failure is no failure."""
    conn.begin("saying goodbye")
    with contextlib.suppress(ProbeFailed, _StepTimeout, OSError):
        goodbye()


def _clip(text: str, limit: int = 160) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


_PROTOCOLS: dict[
    str, Callable[[_Conn, ProbeSettings, tuple[str, str] | None], str]
] = {
    "imap": _probe_imap,
    "pop3": _probe_pop3,
    "smtp": _probe_smtp,
    "http": _probe_http,
    "tcp": _probe_tcp,
}


# --------------------------------------------------------------------------- entry point
def run_probe(settings: ProbeSettings, clock: Clock) -> ProbeResult:
    """Probe one endpoint; never raises. `latency_ms` covers connect to the last reply."""
    import ssl
    kind = settings.kind
    t = clock.now()
    protocol = _PROTOCOLS.get(kind)
    if protocol is None:
        return ProbeResult(t, settings.name, False, None, f"{kind}: unknown probe kind")
    try:
        login = _read_password(settings)
    except ProbeFailed as exc:
        return ProbeResult(t, settings.name, False, None, f"{kind}: {exc}")
    start = clock.monotonic()

    def result(ok: bool, detail: str) -> ProbeResult:
        latency = (clock.monotonic() - start) * 1000.0
        return ProbeResult(t, settings.name, ok, latency, f"{kind}: {detail}")

    where = f"{settings.host}:{settings.port}"
    try:
        sock = socket.create_connection(
            (settings.host, settings.port), timeout=settings.connect_timeout_s
        )
    except TimeoutError:
        return result(False, f"timeout after {settings.connect_timeout_s}s connecting to {where}")
    except ConnectionRefusedError:
        return result(False, f"connection refused by {where}")
    except OSError as exc:
        return result(False, f"cannot connect to {where}: {exc.strerror or exc}")
    except Exception as exc:  # never raise
        return result(False, f"connecting to {where}: {type(exc).__name__}: {exc}")
    conn = _Conn(sock, clock, settings.read_timeout_s)
    try:
        if settings.tls == "tls":
            conn.start_tls(settings)
        return result(True, protocol(conn, settings, login))
    except ProbeFailed as exc:
        return result(False, str(exc))
    except _StepTimeout:
        return result(False, f"timeout after {settings.read_timeout_s}s {conn.step}")
    except ssl.SSLCertVerificationError as exc:
        return result(False, f"TLS certificate verification failed: {exc.verify_message}")
    except ssl.SSLError as exc:
        return result(False, f"TLS error while {conn.step}: {exc.reason or exc}")
    except ConnectionError as exc:
        return result(False, f"connection lost while {conn.step}: {exc.strerror or exc}")
    except OSError as exc:
        return result(False, f"error while {conn.step}: {exc.strerror or exc}")
    except Exception as exc:  # a bug here must not take the agent down
        return result(False, f"internal error while {conn.step}: {type(exc).__name__}: {exc}")
    finally:
        conn.close()


# --------------------------------------------------------------------------- scheduler
Runner = Callable[[ProbeSettings, Clock], ProbeResult]


@dataclass
class _Slot:
    settings: ProbeSettings
    next_due: float
    in_flight: bool = False


class ProbeScheduler:
    """Runs each probe on its own interval in a worker thread; results come back by queue.

    The daemon's selectors loop watches `fileno()` (a pipe that gets a byte per result),
    calls `drain()` when it is readable and `tick(now)` on its timer. At most one run per
    probe is in flight: a probe that hangs past its interval is not started again until
    its result has been drained. `now` is the clock's monotonic time.
    """

    def __init__(
        self,
        probes: Iterable[ProbeSettings],
        clock: Clock,
        run: Runner = run_probe,
        first_due: float | None = None,
    ) -> None:
        start = clock.monotonic() if first_due is None else first_due
        self._slots = {p.name: _Slot(p, start) for p in probes}
        self._clock = clock
        self._run = run
        self._results: queue.SimpleQueue[ProbeResult] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Guards the write end: a worker finishing after close() must not write into a
        # recycled fd number that now belongs to something else.
        self._pipe_lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        """Readable when at least one result is waiting in `drain()`."""
        return self._read_fd

    def due(self, now: float) -> list[ProbeSettings]:
        """The probes whose interval has come and that are not already running."""
        return [s.settings for s in self._slots.values() if not s.in_flight and now >= s.next_due]

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next probe is due (0 = now), None when all are in flight."""
        waits = [s.next_due - now for s in self._slots.values() if not s.in_flight]
        return max(0.0, min(waits)) if waits else None

    def in_flight(self) -> list[str]:
        return [name for name, s in self._slots.items() if s.in_flight]

    def start(self, settings: ProbeSettings, now: float) -> None:
        """Run one probe in a worker thread; its next run is due one interval from now."""
        slot = self._slots[settings.name]
        slot.in_flight = True
        slot.next_due = now + settings.interval_s
        worker = threading.Thread(
            target=self._work, args=(settings,), name=f"probe-{settings.name}", daemon=True
        )
        worker.start()

    def tick(self, now: float) -> list[str]:
        """Start every due probe; the names started."""
        started = self.due(now)
        for settings in started:
            self.start(settings, now)
        return [s.name for s in started]

    def drain(self) -> list[ProbeResult]:
        """Every result that has arrived (possibly none); their probes may run again."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass
        out: list[ProbeResult] = []
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                break
            slot = self._slots.get(result.name)
            if slot is not None:
                slot.in_flight = False
            out.append(result)
        return out

    def close(self) -> None:
        """Close the wake-up pipe. Running workers finish on their own (their timeouts)."""
        with self._pipe_lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._read_fd, self._write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> ProbeScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self, settings: ProbeSettings) -> None:
        try:
            result = self._run(settings, self._clock)
        except Exception as exc:  # a runner must never lose a slot for good
            result = ProbeResult(
                self._clock.now(), settings.name, False, None,
                f"{settings.kind}: internal error: {type(exc).__name__}: {exc}",
            )
        self._results.put(result)
        with self._pipe_lock:
            if self._closed:
                return  # nobody listens any more
            # A full pipe already means "wake up".
            with contextlib.suppress(BlockingIOError):
                os.write(self._write_fd, b"\0")
