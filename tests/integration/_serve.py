"""`nodewarden-coordinator serve` for the tests: the real console script in the
foreground, its socket in the test's directory (the coordinator's configuration names
it: make_coordinator(serve_socket=...)). Started, it is ready once its socket accepts
a connection; it is always stopped (SIGTERM, then SIGKILL) and its log kept for the
assertion messages."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.integration._coordinator import COORDINATOR
from tests.integration._wait import poll

READY_DEADLINE_S = 30.0


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a crash would: no clean-up of any kind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


def accepts(path: Path) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


@contextlib.contextmanager
def running_serve(config: Path, socket_path: Path, log: Path) -> Iterator[Serve]:
    proc = subprocess.Popen([COORDINATOR, "--config", str(config), "serve"],
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    serve = Serve(proc, socket_path, log)
    try:
        ready = poll(lambda: True if accepts(socket_path) else None, READY_DEADLINE_S,
                     give_up=lambda: proc.poll() is not None)
        assert ready, f"serve did not start:\n{serve.text()}"
        yield serve
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
