"""A probe's connection: a socket with a deadline per step (a server trickling a byte a
second cannot stretch a step past `read_timeout_s`), bounded line reads, STARTTLS."""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

from agent.clock import Clock
from agent.sources.settings import ProbeSettings

if TYPE_CHECKING:  # ssl costs RSS: imported when a probe runs
    import ssl

MAX_LINE_BYTES = 8192
RECV_CHUNK = 4096


class ProbeFailed(Exception):
    """A probe step failed; `str(exc)` is the detail without the `kind:` prefix."""


class StepTimeout(Exception):
    """The current step's deadline passed."""


class Conn:
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
            raise StepTimeout
        self.sock.settimeout(remaining)

    def send(self, data: bytes) -> None:
        self._arm()
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise StepTimeout from exc

    def recv(self, limit: int = RECV_CHUNK) -> bytes:
        """Buffered bytes first, then at most `limit` from the socket (b"" = closed)."""
        if self._buf:
            out, self._buf = self._buf[:limit], self._buf[limit:]
            return out
        self._arm()
        try:
            return self.sock.recv(limit)
        except TimeoutError as exc:
            raise StepTimeout from exc

    def readline(self) -> str:
        """One CRLF/LF-terminated line, decoded leniently, without its terminator."""
        too_long = f"reply line longer than {MAX_LINE_BYTES} bytes while {self.step}"
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE_BYTES:
                raise ProbeFailed(too_long)
            self._arm()
            try:
                chunk = self.sock.recv(RECV_CHUNK)
            except TimeoutError as exc:
                raise StepTimeout from exc
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
            raise StepTimeout from exc

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
