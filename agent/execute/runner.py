"""Runners carry out one Step. The Executor is the same for dry-run and execute; only the
runner differs (docs/architecture.md, safety property 4), so the two cannot diverge.

`SubprocessRunner` runs the argv (never a shell) in its own process group with a
sanitized environment, captures bounded output and kills the whole group on timeout.
`RecordingRunner` records each step and runs nothing.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
from collections.abc import Mapping
from typing import IO, Protocol

from agent.clock import Clock, SystemClock
from agent.model import Step, StepResult

#: the environment every step gets: no inherited secrets, locale or pager surprises
SAFE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

#: bytes of stdout and of stderr kept per step; the rest is read and counted, not kept
DEFAULT_MAX_OUTPUT = 64 * 1024

#: how long to wait for a killed process group to be reaped (a task stuck in D state
#: cannot die; the runner then reports it instead of hanging with it)
REAP_WAIT_S = 5.0
#: after the process exited, how long its output pipes are still read: a background
#: child it left behind may hold them open, which is not the step timing out
DRAIN_AFTER_EXIT_S = 1.0


class Runner(Protocol):
    """Carries out one step. `executes` says whether anything really runs."""

    executes: bool

    def run(self, step: Step) -> StepResult: ...


class RecordingRunner:
    """Dry-run: records every step it is handed and runs nothing."""

    executes = False

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def run(self, step: Step) -> StepResult:
        self.steps.append(step)
        return StepResult(argv=step.argv, exit_code=None, duration_s=0.0, ran=False)


class _Pipes:
    """One run's pipes: stdin fed from `data`, stdout and stderr kept up to `cap` bytes
    each (the rest counted as dropped)."""

    def __init__(self, proc: subprocess.Popen[bytes], data: bytes, cap: int) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        self.dropped = dict.fromkeys(self.bufs, 0)
        self.data = memoryview(data)
        self.written = 0
        self.cap = cap
        self.stdin_fd = proc.stdin.fileno() if proc.stdin is not None else -1

    def register(self, sel: selectors.BaseSelector) -> None:
        for fd in self.bufs:
            sel.register(fd, selectors.EVENT_READ)
        if self.proc.stdin is not None:
            os.set_blocking(self.stdin_fd, False)
            if self.data:
                sel.register(self.stdin_fd, selectors.EVENT_WRITE)
            else:
                self.proc.stdin.close()

    def ready(self, sel: selectors.BaseSelector, fd: int) -> None:
        """Write the next chunk of stdin, or read a chunk of output; unregister at EOF."""
        if fd == self.stdin_fd and self.proc.stdin is not None:
            try:
                self.written += os.write(fd, self.data[self.written:self.written + 65536])
            except BrokenPipeError:
                self.written = len(self.data)
            if self.written >= len(self.data):
                sel.unregister(fd)
                self.proc.stdin.close()
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            sel.unregister(fd)
            return
        room = max(0, self.cap - len(self.bufs[fd]))
        self.bufs[fd] += chunk[:room]
        self.dropped[fd] += max(0, len(chunk) - room)


class SubprocessRunner:
    """Runs a step's argv as a child process: no shell, own session, bounded output.

    On timeout the whole process group gets SIGKILL. A program that cannot be started
    yields exit code 127 (not found) or 126 (cannot execute), as a shell would say.
    """

    executes = True

    def __init__(
        self,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self._clock = clock or SystemClock()
        self._env = dict(SAFE_ENV if env is None else env)
        self._max = max_output

    def run(self, step: Step) -> StepResult:
        start = self._clock.monotonic()
        try:
            proc = subprocess.Popen(
                step.argv,
                stdin=subprocess.PIPE if step.input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            return StepResult(step.argv, code, self._clock.monotonic() - start,
                              stderr=f"cannot run {step.argv[0]!r}: {exc.strerror or exc}")
        deadline = start + step.timeout_s
        out, err, timed_out = self._communicate(proc, step, deadline)
        if not timed_out:
            try:
                proc.wait(timeout=max(0.0, deadline - self._clock.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        exit_code: int | None
        if timed_out:
            _kill_group(proc.pid)
            try:
                exit_code = proc.wait(timeout=REAP_WAIT_S)
            except subprocess.TimeoutExpired:
                exit_code = None
                err += f"\n[nodewarden: process {proc.pid} did not die after SIGKILL]"
        else:
            exit_code = proc.returncode
        _close(proc.stdin, proc.stdout, proc.stderr)
        return StepResult(step.argv, exit_code, self._clock.monotonic() - start,
                          stdout=out, stderr=err, timed_out=timed_out)

    def _communicate(
        self, proc: subprocess.Popen[bytes], step: Step, deadline: float
    ) -> tuple[str, str, bool]:
        """Feed stdin and read stdout/stderr until both close or the deadline passes."""
        assert proc.stdout is not None and proc.stderr is not None
        pipes = _Pipes(proc, (step.input_text or "").encode(), self._max)
        exited_fd = _pidfd(proc.pid)
        drain_until: float | None = None
        with selectors.DefaultSelector() as sel:
            pipes.register(sel)
            if exited_fd is not None:
                sel.register(exited_fd, selectors.EVENT_READ)
            while set(sel.get_map()) - {exited_fd}:
                now = self._clock.monotonic()
                if drain_until is not None and now >= drain_until:
                    # it exited; a background child still holds its output: not a timeout
                    break
                remaining = min(deadline, drain_until or deadline) - now
                if remaining <= 0:
                    _close_fd(exited_fd)
                    return (*self._text(pipes.bufs, pipes.dropped, proc), True)
                for key, _ in sel.select(remaining):
                    if int(key.fd) == exited_fd:
                        sel.unregister(exited_fd)
                        drain_until = self._clock.monotonic() + DRAIN_AFTER_EXIT_S
                    else:
                        pipes.ready(sel, int(key.fd))
        _close_fd(exited_fd)
        return (*self._text(pipes.bufs, pipes.dropped, proc), False)

    @staticmethod
    def _text(
        bufs: dict[int, bytearray], dropped: dict[int, int], proc: subprocess.Popen[bytes]
    ) -> tuple[str, str]:
        assert proc.stdout is not None and proc.stderr is not None
        texts = []
        for fd in (proc.stdout.fileno(), proc.stderr.fileno()):
            text = bufs[fd].decode("utf-8", "replace")
            if dropped[fd]:
                text += f"\n[nodewarden: {dropped[fd]} more bytes not kept]"
            texts.append(text)
        return texts[0], texts[1]


def _pidfd(pid: int) -> int | None:
    """An fd that becomes readable when the process exits (Linux 5.3+), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _close(*files: IO[bytes] | None) -> None:
    for f in files:
        if f is not None:
            f.close()
