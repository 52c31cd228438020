"""A real HAProxy on loopback with its own config, admin socket and two backends servers.

    with haproxy_with_servers(tmp_path) as hap:   # backend "nwtest", servers s1 and s2
        hap.state("s1")            # ServerState from `show servers state`
        hap.listeners["s2"].close()   # s2 fails its health checks → DOWN

The servers are tiny listeners in this process (accept, close); HAProxy checks them
every 100 ms. Everything (haproxy, listeners) is stopped on exit.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.execute.haproxy_cmd import ServerState, servers
from tests.integration._wait import poll

BACKEND = "nwtest"


class _Quiet(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        pass


class Listener:
    def __init__(self) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Quiet)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class HAProxy:
    proc: subprocess.Popen[bytes]
    socket: Path
    listeners: dict[str, Listener]

    def states(self) -> list[ServerState]:
        return servers(str(self.socket), BACKEND)

    def state(self, server: str) -> ServerState:
        return next(s for s in self.states() if s.server == server)

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll the runtime API (HAProxy has no change notification) until `cond` holds."""
        held = poll(lambda: True if cond() else None, timeout,
                    give_up=lambda: self.proc.poll() is not None)
        assert self.proc.poll() is None, "haproxy exited"
        assert held, f"haproxy: not {what} within {timeout}s"


def config_text(sock: Path, frontend_port: int, ports: dict[str, int]) -> str:
    lines = [
        "global", f"    stats socket {sock} level admin", "",
        "defaults", "    mode tcp", "    timeout connect 1s", "    timeout client 5s",
        "    timeout server 5s", "",
        "frontend nwtest_in", f"    bind 127.0.0.1:{frontend_port}",
        f"    default_backend {BACKEND}", "",
        f"backend {BACKEND}",
        *(f"    server {name} 127.0.0.1:{port} check inter 100ms fall 2 rise 1"
          for name, port in ports.items()),
    ]
    return "\n".join(lines) + "\n"


@contextmanager
def haproxy_with_servers(directory: Path, names: tuple[str, ...] = ("s1", "s2")
                         ) -> Iterator[HAProxy]:
    listeners: dict[str, Listener] = {}
    proc: subprocess.Popen[bytes] | None = None
    try:
        for name in names:
            listeners[name] = Listener()
        sock = directory / "admin.sock"
        cfg = directory / "haproxy.cfg"
        ports = {n: lis.port for n, lis in listeners.items()}
        cfg.write_text(config_text(sock, free_port(), ports))
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True,
                               text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        hap = HAProxy(proc, sock, listeners)
        hap.wait_for("listening on its admin socket", sock.exists)
        hap.wait_for("UP on every server",
                     lambda: sorted(s.server for s in hap.states() if s.healthy) == sorted(names))
        yield hap
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for lis in listeners.values():
            lis.close()
