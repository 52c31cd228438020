"""Filesystem use (statvfs) with no resident helper, immune to a hung NFS/CIFS/FUSE mount.

statvfs() on a hard-mounted NFS path whose server is gone blocks in the kernel, possibly
for hours. So the caller never makes the call itself: each call runs in a short-lived
daemon thread of its own, and the caller only reads what the calls left behind.

* **At most one call per mount in flight.** A mount whose call has not returned gets no
  new one, so a hung mount costs one stuck call, never a growing pile of them. When the
  call returns (the server came back), the mount is measured again on the next start.
* **Hung is a reading, not a wait.** A call outstanding for longer than `timeout_s` makes
  the mount's reading "hung" with how long it has been stuck; nobody waits for it.
* **Where the call runs decides whether the agent can still exit.** A thread stuck in a
  killable wait (NFS, CIFS: TASK_KILLABLE) ends with the process's exit_group(). A FUSE
  request that its server has read but never answers is waited out *uninterruptibly*
  (fs/fuse/dev.c, request_wait_answer): a thread stuck there keeps the whole process
  from exiting, a zombie leader plus one D thread that no signal ends (measured:
  tests/integration/test_hung_mount_real.py). So network and FUSE mounts (by their type
  in /proc/self/mountinfo, read without touching the mount) are measured by a short-lived
  `stat --file-system` child in its own session, which the thread waits for: a stuck
  child is a small process of its own (about 1 MiB), killed at close, and the agent
  exits. Local filesystems answer statfs from memory: a thread does the call (~0.1 ms
  against ~1 ms for a child).

Before this, a resident Python helper process made every call (8.4 MiB of RSS for a
once-every-10-s statvfs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Statvfs = Callable[[str], os.statvfs_result]

STAT = "/usr/bin/stat"
MOUNTINFO = "/proc/self/mountinfo"
#: filesystem types whose statfs can wait on a server (or a FUSE daemon) for good
NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "ncpfs",
    "lustre", "gpfs", "beegfs", "ocfs2", "gfs2", "davfs", "sshfs", "fuse", "fuseblk",
})


@dataclass(frozen=True)
class FsReading:
    """Use of one mount in percent (as df computes it), or None with the reason."""

    mount: str
    used_pct: float | None
    reason: str = ""
    #: the monotonic time the value was measured (None: never measured)
    at: float | None = None


def used_pct(blocks: int, bfree: int, bavail: int) -> float:
    """df's Use%: used / (used + available to unprivileged users), reserved blocks aside."""
    used = blocks - bfree
    denominator = used + bavail
    return 100.0 * used / denominator if denominator > 0 else 0.0


@dataclass
class _Call:
    """One statvfs in flight (or just ended) for one mount."""

    started: float
    done: threading.Event
    reading: FsReading | None = None
    #: the `stat` child measuring a network or FUSE mount, while it runs
    pid: int | None = None
    #: a caller waited `timeout_s` for it in vain (measure()): hung, whatever the clock says
    waited_out: bool = False


class FsUsage:
    """Measures the configured mounts in daemon threads; never blocks on a mount.

    `start()` begins a call for each mount that has none in flight and returns at once;
    `readings()` says what the calls found. `measure()` does both and waits for the calls
    up to `timeout_s` in all (one-shot commands, tests). Times are `monotonic`'s.
    """

    def __init__(
        self,
        mounts: Sequence[str],
        timeout_s: float,
        *,
        statvfs: Statvfs | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        mountinfo: str = MOUNTINFO,
    ) -> None:
        self.mounts = tuple(mounts)
        self.timeout_s = timeout_s
        self._statvfs = statvfs  # None: os.statvfs, or a child for network/FUSE mounts
        self._mountinfo = mountinfo
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        self._last: dict[str, FsReading] = {}
        self._closed = False

    def start(self) -> int:
        """Start a call for every mount with none in flight; returns how many started."""
        started = 0
        with self._lock:
            if self._closed:
                return 0
            types = mount_types(self._mountinfo) if self._statvfs is None else {}
            for mount in self.mounts:
                call = self._calls.get(mount)
                if call is not None and not call.done.is_set():
                    continue  # still in flight (maybe hung): never a second call
                call = _Call(self._monotonic(), threading.Event())
                self._calls[mount] = call
                in_child = fs_type_of(mount, types) in NETWORK_TYPES or (
                    fs_type_of(mount, types).startswith("fuse."))
                threading.Thread(target=self._run, args=(mount, call, in_child),
                                 daemon=True, name="statvfs").start()
                started += 1
        return started

    def readings(self) -> dict[str, FsReading]:
        """Per mount: hung (a call older than timeout_s), else the last value or error."""
        now = self._monotonic()
        out: dict[str, FsReading] = {}
        with self._lock:
            for mount in self.mounts:
                call = self._calls.get(mount)
                if call is not None and not call.done.is_set():
                    stuck = now - call.started
                    if call.waited_out or stuck > self.timeout_s:
                        out[mount] = self._hung(mount, max(stuck, self.timeout_s))
                        continue
                last = self._last.get(mount)
                out[mount] = last if last is not None else FsReading(
                    mount, None, "not measured yet")
        return out

    def measure(self) -> dict[str, FsReading]:
        """Start the calls and wait for them, `timeout_s` at most in all; a call still
        out then makes its mount hung."""
        self.start()
        self.wait(self.timeout_s)
        with self._lock:
            for call in self._calls.values():
                call.waited_out = not call.done.is_set()
        return self.readings()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` in all for the calls in flight; True when none is left."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            calls = list(self._calls.values())
        for call in calls:
            call.done.wait(max(0.0, deadline - time.monotonic()))
        return all(call.done.is_set() for call in calls)

    def _hung(self, mount: str, stuck: float) -> FsReading:
        return FsReading(mount, None, (
            f"hung: statvfs has not returned for {stuck:.1f} s (timeout {self.timeout_s:g} s); "
            "measured again once it returns"))

    def in_flight(self) -> dict[str, float]:
        """Mounts with a call outstanding, and for how many seconds."""
        now = self._monotonic()
        with self._lock:
            return {m: now - c.started for m, c in self._calls.items() if not c.done.is_set()}

    def stuck_pids(self) -> dict[str, int]:
        """The `stat` children still running, by mount (a hung network or FUSE mount)."""
        with self._lock:
            return {m: c.pid for m, c in self._calls.items()
                    if c.pid is not None and not c.done.is_set()}

    def close(self) -> None:
        """No new calls; kill the `stat` children still out (each dies when its mount
        lets it). A thread stuck in a killable wait ends with the process."""
        with self._lock:
            self._closed = True
            for call in self._calls.values():
                if call.pid is not None and not call.done.is_set():
                    # ours and not yet reaped (_stat_in_child clears pid before reaping)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(call.pid, signal.SIGKILL)

    def _run(self, mount: str, call: _Call, in_child: bool) -> None:
        try:
            if self._statvfs is not None:
                st = self._statvfs(mount)
            elif in_child:
                st = self._stat_in_child(mount, call)
            else:
                st = os.statvfs(mount)
        except OSError as exc:
            reading = FsReading(mount, None, f"statvfs failed: {exc.strerror or exc}",
                                at=self._monotonic())
        except Exception as exc:  # a bug must not leave the mount "in flight" for good
            reading = FsReading(mount, None, f"statvfs raised {type(exc).__name__}: {exc}",
                                at=self._monotonic())
        else:
            reading = FsReading(mount, used_pct(st.f_blocks, st.f_bfree, st.f_bavail),
                                at=self._monotonic())
        with self._lock:
            call.reading = reading
            self._last[mount] = reading
            call.done.set()

    def _stat_in_child(self, mount: str, call: _Call) -> os.statvfs_result:
        """statvfs through `stat --file-system` in its own session; waits for it here."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            with self._lock:
                if self._closed:
                    raise OSError(0, "fs usage measurement closed")
                call.pid = os.posix_spawn(
                    STAT, ["stat", "--file-system", "--format=%b %f %a", "--", mount], {},
                    file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1),
                                  (os.POSIX_SPAWN_DUP2, write_fd, 2)],
                    setsid=True)
            os.close(write_fd)
            write_fd = -1
            out = b""
            while chunk := os.read(read_fd, 4096):
                out = (out + chunk)[-4096:]
            pid = call.pid
            # exited, not yet reaped: close() may still kill it (the PID is ours) until
            # it is marked gone under the lock; only then is it reaped (the PID is free)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            with self._lock:
                call.pid = None
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        return parse_stat_output(out, os.waitstatus_to_exitcode(status))


def parse_stat_output(out: bytes, code: int) -> os.statvfs_result:
    """`stat -f --format='%b %f %a'` output as a statvfs_result (blocks, free, avail)."""
    text = out.decode("utf-8", "replace").strip()
    if code != 0:
        why = text.rsplit(": ", 1)[-1] if text else f"stat exited {code}"
        raise OSError(0, why)
    try:
        blocks, bfree, bavail = (int(x) for x in text.split())
    except ValueError:
        raise OSError(0, f"stat printed {text[:80]!r}") from None
    return os.statvfs_result((0, 0, blocks, bfree, bavail, 0, 0, 0, 0, 0))


def mount_types(path: str = MOUNTINFO) -> dict[str, str]:
    """Mount point -> filesystem type, from mountinfo (reading it touches no mount)."""
    try:
        with open(path, "rb") as f:  # noqa: PTH123 (a /proc file, read once)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if sep and len(fields) >= 5 and tail:
            out[_unescape(fields[4])] = tail.split(None, 1)[0]
    return out


def fs_type_of(path: str, types: dict[str, str]) -> str:
    """The type of the mount holding `path`: the longest mount point that is a prefix of
    it, compared as text (resolving links could itself hang on a dead mount)."""
    path = os.path.normpath(path)
    if not path.startswith("/"):
        return ""
    while True:
        found = types.get(path)
        if found is not None:
            return found
        if path == "/":
            return ""
        path = path.rsplit("/", 1)[0] or "/"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in a path as octal escapes."""
    if "\\" not in field:
        return field
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))
