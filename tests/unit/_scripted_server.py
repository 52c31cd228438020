"""A tiny scripted TCP server on loopback for protocol edge cases (real sockets, one thread).

A script is a list of steps run against the first connection:
  Send(b"...")          send bytes
  Expect()              read one line from the client and record it in `received`
  Forever(b"...")       send the chunk again and again until the client goes away
  Call(fn)              run fn() in the server thread (e.g. advance a FakeClock)
  Trickle(b"...", s)    send one byte every s seconds
  Close()               close the connection now
otherwise the connection is held open until the server is closed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Expect:
    pass


@dataclass(frozen=True)
class Forever:
    chunk: bytes


@dataclass(frozen=True)
class Call:
    fn: Callable[[], object]


@dataclass(frozen=True)
class Trickle:
    data: bytes
    every_s: float


@dataclass(frozen=True)
class Close:
    pass


Step = Send | Expect | Forever | Call | Trickle | Close


class ScriptedServer:
    def __init__(self, script: Sequence[Step]) -> None:
        self.script = list(script)
        self.received: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="scripted-server", daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(5)

    def wait_done(self, timeout: float = 5.0) -> bool:
        """True once the script has run to its end (or the client went away)."""
        return self._done.wait(timeout)

    def _serve(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):
            buf = b""
            for step in self.script:
                if isinstance(step, Send):
                    conn.sendall(step.data)
                elif isinstance(step, Expect):
                    while b"\n" not in buf:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        buf += chunk
                    line, _, buf = buf.partition(b"\n")
                    self.received.append(line + b"\n")
                elif isinstance(step, Forever):
                    while not self._closed.is_set():
                        conn.sendall(step.chunk)
                elif isinstance(step, Call):
                    step.fn()
                elif isinstance(step, Close):
                    break
                else:
                    for byte in step.data:
                        if self._closed.wait(step.every_s):
                            return
                        conn.sendall(bytes([byte]))
            else:
                self._done.set()
                self._closed.wait(10)
        self._done.set()


