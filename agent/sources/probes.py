"""Protocol probes: is the mail service answering the way a client needs it to?

`run_probe(settings, clock)` talks one protocol (IMAP, POP3, SMTP, HTTP(S), plain TCP) to
one endpoint and returns a ProbeResult. It never raises: every failure, including a bug
in here, becomes `ok=False` with a detail that names the step that failed
("imap: timeout after 2.0s reading greeting").

Bounds, because a probe must not be the thing that hangs: the connect timeout bounds
the TCP connect; every later step (TLS handshake, reading one reply) has its own
deadline of `read_timeout_s`, enforced across recv calls so a server trickling a byte a
second cannot stretch it; a reply line is capped at MAX_LINE_BYTES, a multi-line reply
at MAX_REPLY_LINES and an HTTP body at MAX_BODY_BYTES (ssl and http.client, ~4.5 MiB of
RSS, are imported when a probe runs).

`agent/sources/probescheduler.py` runs them in worker threads, off the daemon's loop.
"""

from __future__ import annotations

import base64
import contextlib
import io
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.clock import Clock
from agent.model import ProbeResult
from agent.sources.probeconn import Conn, ProbeFailed, StepTimeout
from agent.sources.settings import ProbeSettings

MAX_REPLY_LINES = 200
MAX_BODY_BYTES = 1024 * 1024
MAX_BANNER_BYTES = 65536
_USER_AGENT = "nodewarden-probe/1"


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


def _imap_tagged(conn: Conn, tag: str) -> str:
    """Read to the tagged completion line, skipping (a bounded number of) untagged ones."""
    for _ in range(MAX_REPLY_LINES):
        line = conn.readline()
        if line.startswith(tag + " "):
            return line
    raise ProbeFailed(f"more than {MAX_REPLY_LINES} reply lines while {conn.step}")


def _imap_command(conn: Conn, tag: str, verb: str, args: Sequence[str] = ()) -> str:
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


def _probe_imap(conn: Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
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


def _pop3_ok(conn: Conn, what: str) -> str:
    line = conn.readline()
    if not line.startswith("+OK"):
        raise ProbeFailed(f"{what}: {_clip(line)}")
    return line


def _probe_pop3(conn: Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
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


def _smtp_reply(conn: Conn) -> tuple[int, list[str]]:
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


def _smtp_expect(conn: Conn, want: int, what: str) -> list[str]:
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


def _probe_smtp(conn: Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
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
    """Lets http.client parse a response read through Conn's deadlines."""

    def __init__(self, conn: Conn) -> None:
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

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineRaw(self.conn))


def _host_header(settings: ProbeSettings) -> str:
    host = settings.server_name or settings.host
    if ":" in host:
        host = f"[{host}]"
    default = 443 if settings.tls == "tls" else 80
    return host if settings.port == default else f"{host}:{settings.port}"


def _probe_http(conn: Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
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


def _probe_tcp(conn: Conn, settings: ProbeSettings, login: tuple[str, str] | None) -> str:
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


def _polite(conn: Conn, goodbye: Callable[[], object]) -> None:
    """Say goodbye (LOGOUT/QUIT) so servers log a clean session; its failure is no failure."""
    conn.begin("saying goodbye")
    with contextlib.suppress(ProbeFailed, StepTimeout, OSError):
        goodbye()


def _clip(text: str, limit: int = 160) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


_PROTOCOLS: dict[
    str, Callable[[Conn, ProbeSettings, tuple[str, str] | None], str]
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

    try:
        sock = socket.create_connection(
            (settings.host, settings.port), timeout=settings.connect_timeout_s
        )
    except Exception as exc:  # never raise
        return result(False, _connect_failure(exc, settings))
    conn = Conn(sock, clock, settings.read_timeout_s)
    try:
        if settings.tls == "tls":
            conn.start_tls(settings)
        return result(True, protocol(conn, settings, login))
    except Exception as exc:  # a bug here must not take the agent down either
        return result(False, _session_failure(exc, conn, settings))
    finally:
        conn.close()


def _connect_failure(exc: Exception, settings: ProbeSettings) -> str:
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, TimeoutError):
        return f"timeout after {settings.connect_timeout_s}s connecting to {where}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"connecting to {where}: {type(exc).__name__}: {exc}"


def _session_failure(exc: Exception, conn: Conn, settings: ProbeSettings) -> str:
    """What went wrong after the connect, named by the step it went wrong in."""
    import ssl

    if isinstance(exc, ProbeFailed):
        return str(exc)
    if isinstance(exc, StepTimeout):
        return f"timeout after {settings.read_timeout_s}s {conn.step}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error while {conn.step}: {exc.reason or exc}"
    if isinstance(exc, ConnectionError):
        return f"connection lost while {conn.step}: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        return f"error while {conn.step}: {exc.strerror or exc}"
    return f"internal error while {conn.step}: {type(exc).__name__}: {exc}"
