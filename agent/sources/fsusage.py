"""Filesystem use measured in a separate process, so a hung NFS mount cannot hang the agent.

statvfs() on a hard-mounted NFS path whose server is gone blocks in the kernel, in D
state, possibly forever. So the agent never calls it itself: a small long-lived helper
process does, answering one line per path. The agent waits for each answer with a
timeout; on timeout it kills the helper, reports that mount unavailable with the reason,
and starts a fresh helper for the other mounts. While the killed helper has not exited
(it may stay stuck until the server returns), that mount is skipped instead of piling
up one stuck process per attempt.

Protocol (helper stdin/stdout): the agent writes `PATH\\n`; the helper answers
`ok BLOCKS BFREE BAVAIL\\n` or `err ERRNO\\n`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: the helper: a bare interpreter (-I isolated, -S no site) costs ~8 ms once and ~6 MiB
HELPER_SOURCE = """\
import os, sys
r = sys.stdin.buffer
w = sys.stdout.buffer
for line in r:
    try:
        s = os.statvfs(line[:-1])
    except OSError as e:
        w.write(b"err %d\\n" % (e.errno or 0))
    else:
        w.write(b"ok %d %d %d\\n" % (s.f_blocks, s.f_bfree, s.f_bavail))
    w.flush()
"""
DEFAULT_HELPER_ARGV: tuple[str, ...] = (sys.executable, "-I", "-S", "-c", HELPER_SOURCE)


@dataclass(frozen=True)
class FsReading:
    """Use of one mount in percent (as df computes it), or None with the reason."""

    mount: str
    used_pct: float | None
    reason: str = ""


def used_pct(blocks: int, bfree: int, bavail: int) -> float:
    """df's Use%: used / (used + available to unprivileged users), reserved blocks aside."""
    used = blocks - bfree
    denominator = used + bavail
    return 100.0 * used / denominator if denominator > 0 else 0.0


def parse_answer(mount: str, line: bytes) -> FsReading:
    parts = line.split()
    if len(parts) == 4 and parts[0] == b"ok":
        return FsReading(mount, used_pct(int(parts[1]), int(parts[2]), int(parts[3])))
    if len(parts) == 2 and parts[0] == b"err":
        errno_ = int(parts[1])
        return FsReading(mount, None, f"statvfs failed: {os.strerror(errno_)}")
    return FsReading(mount, None, f"helper answered nonsense: {line[:80]!r}")


class FsUsage:
    """Measures configured mounts through the helper; `measure()` is bounded by
    `timeout_s` per mount (plus up to 0.5 s to reap a killed helper).

    Not thread-safe: one worker thread owns it (see agent/sources/periodic.py).
    """

    def __init__(
        self,
        mounts: Sequence[str],
        timeout_s: float,
        *,
        helper_argv: Sequence[str] = DEFAULT_HELPER_ARGV,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mounts = tuple(mounts)
        self.timeout_s = timeout_s
        self._argv = tuple(helper_argv)
        self._monotonic = monotonic
        self._helper: subprocess.Popen[bytes] | None = None
        self._stuck: dict[str, subprocess.Popen[bytes]] = {}
        self._closed = False

    @property
    def helper_pid(self) -> int | None:
        return self._helper.pid if self._helper is not None else None

    def stuck_pids(self) -> dict[str, int]:
        """Killed helpers that have not exited yet, by the mount they hung on."""
        return {m: p.pid for m, p in self._stuck.items() if p.poll() is None}

    def measure(self) -> dict[str, FsReading]:
        return {mount: self._measure_one(mount) for mount in self.mounts}

    def close(self) -> None:
        """Stop the helper (used at shutdown; measure() afterwards reports 'closed')."""
        self._closed = True
        if self._helper is not None:
            self._kill(self._helper)
            self._helper = None

    # ----------------------------------------------------------------------------- internals
    def _measure_one(self, mount: str) -> FsReading:
        if "\n" in mount:
            return FsReading(mount, None, "mount point contains a newline")
        stuck = self._stuck.get(mount)
        if stuck is not None:
            if stuck.poll() is None:
                return FsReading(
                    mount, None,
                    f"still hung: helper pid {stuck.pid} killed after a timeout has not exited",
                )
            del self._stuck[mount]
        if self._closed:
            return FsReading(mount, None, "fs usage measurement closed")
        try:
            helper = self._ensure_helper()
        except OSError as exc:
            return FsReading(mount, None, f"cannot start the statvfs helper: {exc}")
        assert helper.stdin is not None and helper.stdout is not None
        try:
            helper.stdin.write(os.fsencode(mount) + b"\n")
            helper.stdin.flush()
        except OSError as exc:  # the helper died: a fresh one next time
            self._discard(helper)
            return FsReading(mount, None, f"statvfs helper went away: {exc}")
        line = self._read_line(helper.stdout.fileno(), self.timeout_s)
        if line is None:
            self._discard(helper)
            if helper.poll() is None:
                self._stuck[mount] = helper
            return FsReading(
                mount, None,
                f"statvfs timed out after {self.timeout_s:g} s (helper pid {helper.pid} killed)",
            )
        if not line:
            self._discard(helper)
            return FsReading(mount, None, "statvfs helper exited")
        return parse_answer(mount, line)

    def _ensure_helper(self) -> subprocess.Popen[bytes]:
        if self._helper is None or self._helper.poll() is not None:
            self._helper = subprocess.Popen(
                self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
            )
        return self._helper

    def _read_line(self, fd: int, timeout_s: float) -> bytes | None:
        """One answer line; b"" on end of file; None when the deadline passes first.

        The helper writes each answer with a single write() of a few bytes, so after a
        timeout the pipe holds no half line for a later answer to be confused with.
        """
        deadline = self._monotonic() + timeout_s
        buf = b""
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while True:
            left = deadline - self._monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return b""
            buf += chunk
            if buf.endswith(b"\n"):
                return buf

    def _discard(self, helper: subprocess.Popen[bytes]) -> None:
        self._kill(helper)
        if self._helper is helper:
            self._helper = None

    @staticmethod
    def _kill(helper: subprocess.Popen[bytes]) -> None:
        """SIGKILL the helper and reap it if it goes within 0.5 s (NFS waits are killable;
        a task stuck uninterruptibly is left to be reaped by a later poll())."""
        if helper.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(helper.pid, signal.SIGKILL)
        for stream in (helper.stdin, helper.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            helper.wait(0.5)
