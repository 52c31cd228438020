"""A real `nodewarden run` process for integration tests: config, state dir, notify socket.

The test binds its own sd_notify socket and passes it as `NOTIFY_SOCKET`, so it waits
for the agent's real `READY=1` (and reads its STATUS= lines) instead of sleeping. Every
wait has a deadline; nothing here sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.integration._wait import poll

T = TypeVar("T")


DEADLINE_S = 20.0


def nodewarden_bin() -> str:
    """The console script installed beside this interpreter (`pip install -e .`).

    Not the first `nodewarden` on PATH: that may be another install (the README's
    /usr/local/bin link into /opt/nodewarden) of another version. A missing install fails
    the test, it does not skip."""
    path = Path(sys.executable).parent / "nodewarden"
    if not path.exists():  # pyenv: the scripts sit beside the real interpreter
        path = Path(os.path.realpath(sys.executable)).parent / "nodewarden"
    assert path.exists(), f"console script {path} missing: pip install -e ."
    return str(path)


def token() -> str:
    """A unique word for this test's kernel lines (the ring holds earlier runs' lines)."""
    return "nwt" + uuid.uuid4().hex[:12]


def write_kmsg(text: str) -> None:
    """One line to /dev/kmsg from userspace: it arrives with facility 1 (`<11>` = user.err).

    The newline matters: without it the kernel keeps the record open for a continuation
    and readers see it only when the next record is written.

    A fresh open per line: the kernel's write rate limit is kept per open file.
    """
    fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, f"<11>{text}\n".encode())
    finally:
        os.close(fd)


def hung_task_line(task: str) -> str:
    return f"INFO: task {task}:4242 blocked for more than 120 seconds."


def dovecot_auth_failure(address: str) -> str:
    return (
        "Nov 25 13:00:00 mx1 dovecot: imap-login: Disconnected (auth failed, 1 attempts "
        f"in 2 secs): user=<canary>, method=PLAIN, rip={address}, lip=10.0.0.1, TLS"
    )


#: the shipped mail policy: 20 failed logins from one address within 60 s is a flood
AUTH_FLOOD_COUNT = 20


def auth_flood(address: str) -> str:
    """Enough dovecot failures from one address for the mail role's auth-flood rule."""
    return "".join(dovecot_auth_failure(address) + "\n" for _ in range(AUTH_FLOOD_COUNT))


def write_config(
    path: Path, state_dir: Path, mail_log: Path, extra: str = "", role: str = "mail",
    *, kmsg: bool = True, kmsg_path: Path | None = None, hostname: str | None = None,
) -> None:
    """`kmsg_path`: the kernel log device (default /dev/kmsg); `hostname`: the name the
    agent reports as (default the system's)."""
    name = "" if hostname is None else f'hostname = "{hostname}"\n'
    device = "" if kmsg_path is None else f'path = "{kmsg_path}"\n'
    path.write_text(
        f"""
[agent]
state_dir = "{state_dir}"
role = "{role}"
sample_interval_s = 0.5
{name}
[kmsg]
enabled = {str(kmsg).lower()}
{device}
[logs.mail]
path = "{mail_log}"

[udev]
enabled = false
{extra}
""",
        encoding="utf-8",
    )


class Agent:
    """One `nodewarden run --config F` subprocess and what it leaves behind."""

    def __init__(
        self, workdir: Path, config: Path, state_dir: Path, *, watchdog_usec: int = 0,
        netns: str | None = None,
    ) -> None:
        """`netns`: run inside that network namespace (`ip netns exec`, which execs the
        agent: the process is the agent's own, signals reach it)."""
        self.workdir = workdir
        self.config = config
        self.state_dir = state_dir
        self.audit_path = state_dir / "audit.jsonl"
        self.stderr_path = workdir / f"agent-{uuid.uuid4().hex[:6]}.log"
        self.notify_path = workdir / f"notify-{uuid.uuid4().hex[:6]}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        self.messages: list[str] = []
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONUNBUFFERED="1")
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        env.pop("NODEWARDEN_CONFIG", None)
        inside = ["ip", "netns", "exec", netns] if netns else []
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*inside, nodewarden_bin(), "run", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env,
            )

    # ------------------------------------------------------------------ notify socket
    def wait_notify(self, pred: Callable[[str], bool], deadline_s: float = DEADLINE_S) -> str:
        """The first sd_notify message (already received or new) that satisfies `pred`."""
        for msg in self.messages:
            if pred(msg):
                return msg
        end = time.monotonic() + deadline_s
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self._sock], [], [], min(left, 0.5))
            if ready:
                msg = self._sock.recv(4096).decode()
                self.messages.append(msg)
                if pred(msg):
                    return msg
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"no such notify message; got {self.messages}\n{self.log()}")

    def drain_notify(self) -> None:
        """Collect every message already sent (e.g. STOPPING=1 after the process ended)."""
        while select.select([self._sock], [], [], 0)[0]:
            self.messages.append(self._sock.recv(4096).decode())

    def wait_ready(self) -> None:
        self.wait_notify(lambda m: "READY=1" in m.split("\n"))

    # ------------------------------------------------------------------ audit log, stderr
    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        # The agent appends while we read: a record still being written has no newline
        # yet, and is read on the next poll.
        data = self.audit_path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1].decode("utf-8")
        return [json.loads(line) for line in whole.splitlines()]

    def wait_audit(
        self, pred: Callable[[dict[str, Any]], bool], deadline_s: float = DEADLINE_S
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((rec for rec in self.audit() if pred(rec)), None)

        found = self._poll(find, deadline_s)
        if found is None:
            raise AssertionError(f"no such audit record\n{self.log()}")
        return found

    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, deadline_s: float = DEADLINE_S) -> str:
        out = self._poll(lambda: (log if text in (log := self.log()) else None), deadline_s)
        if out is None:
            raise AssertionError(f"{text!r} not in the agent's log:\n{self.log()}")
        return out

    def _poll(self, look: Callable[[], T | None], deadline_s: float) -> T | None:
        """`look()` every 50 ms until it finds something, the agent exits or the deadline
        passes (polling a file with a deadline, not waiting for time to pass)."""
        return poll(look, deadline_s, give_up=lambda: self.proc.poll() is not None)

    # ------------------------------------------------------------------ signals, end
    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = DEADLINE_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.drain_notify()

    def close(self) -> None:
        """Always: no process and no socket left behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()


@contextlib.contextmanager
def running_agent(
    workdir: Path, config: Path, state_dir: Path, *, watchdog_usec: int = 0,
    netns: str | None = None,
) -> Iterator[Agent]:
    agent = Agent(workdir, config, state_dir, watchdog_usec=watchdog_usec, netns=netns)
    try:
        agent.wait_ready()
        yield agent
    finally:
        agent.close()


def findings(records: list[dict[str, Any]], subject: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "finding" and r.get("subject") == subject]
