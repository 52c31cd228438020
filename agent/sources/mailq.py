"""Mail-queue size from a configured command, with a timeout (metric `mailq_size`).

Understood outputs (the format is recognised from the output itself):
  * postfix `postqueue -j`: one JSON object per queued message, one per line;
  * sendmail-style `mailq` text: "Mail queue is empty", or a last line such as
    postfix's "-- 12 Kbytes in 3 Requests." or sendmail's "Total requests: 3";
  * a bare number (exim `exim -bpc`).
The output is counted as it streams, never held whole: a queue that grew to a million
messages (the incident this metric is for) prints hundreds of megabytes.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueReading:
    """The queue size, or None with the reason."""

    size: int | None
    reason: str = ""


class QueueCounter:
    """Counts queued messages in command output fed in chunks of any size."""

    _TAIL = 4096

    def __init__(self) -> None:
        self.json_lines = 0
        self._prev = b"\n"
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.json_lines += chunk.count(b"\n{")
        if self._prev == b"\n" and chunk[:1] == b"{":
            self.json_lines += 1
        self._prev = chunk[-1:]
        self._tail = (self._tail + chunk)[-self._TAIL :]

    def result(self) -> int:
        """The number of messages; ValueError when the output is not a known format."""
        if self.json_lines:
            return self.json_lines
        text = self._tail.decode("utf-8", "replace").strip()
        if not text:
            return 0  # postqueue -j prints nothing for an empty queue
        if text.isdigit():
            return int(text)
        if "Mail queue is empty" in text:
            return 0
        last = text.rsplit("\n", 1)[-1].strip()
        if last.startswith("--") and " in " in last and "Request" in last:
            # postfix: "-- 12 Kbytes in 3 Requests."
            number = last.rsplit(" in ", 1)[1].split()[0]
            if number.isdigit():
                return int(number)
        if last.startswith("Total requests:"):
            number = last.split(":", 1)[1].strip()
            if number.isdigit():
                return int(number)
        raise ValueError(f"unrecognised mail queue output: {last[:80]!r}")


def count_queue(chunks: Iterable[bytes]) -> int:
    counter = QueueCounter()
    for chunk in chunks:
        counter.feed(chunk)
    return counter.result()


class MailQueue:
    """Runs the command (argv, never a shell string) with a timeout and counts its output."""

    def __init__(
        self,
        argv: Sequence[str],
        timeout_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.argv = tuple(argv)
        self.timeout_s = timeout_s
        self._monotonic = monotonic

    def measure(self) -> QueueReading:
        if not self.argv:
            return QueueReading(None, "metrics.mailq_command is not configured")
        try:
            proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, close_fds=True, start_new_session=True,
            )
        except OSError as exc:
            return QueueReading(None, f"cannot run {self.argv[0]}: {exc.strerror or exc}")
        counter = QueueCounter()
        err_tail = b""
        deadline = self._monotonic() + self.timeout_s
        assert proc.stdout is not None and proc.stderr is not None
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        poller = select.poll()
        poller.register(out_fd, select.POLLIN | select.POLLHUP)
        poller.register(err_fd, select.POLLIN | select.POLLHUP)
        open_fds = {out_fd, err_fd}
        try:
            while open_fds:
                left = deadline - self._monotonic()
                events = poller.poll(left * 1000) if left > 0 else []
                if not events:
                    _kill_group(proc)
                    return QueueReading(
                        None, f"{self.argv[0]} timed out after {self.timeout_s:g} s (killed)"
                    )
                for fd, _ in events:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                    elif fd == out_fd:
                        counter.feed(chunk)
                    else:
                        err_tail = (err_tail + chunk)[-512:]
            try:
                code = proc.wait(max(0.0, deadline - self._monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return QueueReading(
                    None, f"{self.argv[0]} timed out after {self.timeout_s:g} s (killed)"
                )
        finally:
            proc.stdout.close()
            proc.stderr.close()
        if code != 0:
            detail = err_tail.decode("utf-8", "replace").strip().splitlines()
            return QueueReading(
                None, f"{self.argv[0]} exited {code}" + (f": {detail[-1]}" if detail else "")
            )
        try:
            return QueueReading(counter.result())
        except ValueError as exc:
            return QueueReading(None, str(exc))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command and anything it started; reap it if it goes within 0.5 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(0.5)
