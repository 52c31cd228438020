"""Stopping a server the tests started, with everything it forked (sshd's connections
and their commands, PostgreSQL's backends): each may sit in a session of its own and
outlive the parent unless killed too."""

from __future__ import annotations

import contextlib
import subprocess

import psutil


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL `proc` and every descendant, and wait for them."""
    with contextlib.suppress(psutil.NoSuchProcess):
        everyone = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in everyone:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(everyone, timeout=10)
    proc.wait(10)
