"""Filesystem use against a real mount that hangs: a FUSE filesystem (tests/integration/
_fuse.py) that stops answering STATFS, so statvfs() blocks in the kernel as it does on a
hard NFS mount whose server is gone. Nothing but the test's own mount point is touched;
the server is killed (aborting every waiting call) and the mount detached afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.sources.fsusage import FsUsage
from tests.integration._agent import running_agent, write_config
from tests.integration._fuse import unmount

pytestmark = pytest.mark.realparts

REPO = Path(__file__).parents[2]
DEADLINE_S = 30.0


@dataclass
class FuseMount:
    path: Path
    server: subprocess.Popen[str]

    def freeze(self) -> None:
        self.server.send_signal(signal.SIGUSR1)

    def thaw(self) -> None:
        self.server.send_signal(signal.SIGUSR2)


@pytest.fixture
def fuse_mount(tmp_path: Path) -> Iterator[FuseMount]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "tests.integration._fuse", str(mnt)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready", "the FUSE server did not start"
        yield FuseMount(mnt, server)
    finally:
        server.kill()  # closes /dev/fuse: every call still waiting returns ENOTCONN
        server.wait()
        unmount(mnt)


def kernel_wait(pid: int) -> tuple[str, str]:
    """(state, where it sleeps in the kernel) of a process: /proc/PID/stat and wchan."""
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state, Path(f"/proc/{pid}/wchan").read_text()


def test_a_frozen_fuse_mount_hangs_statvfs_in_a_child_until_thawed(
    fuse_mount: FuseMount,
) -> None:
    """The part itself: frozen, statfs sleeps in FUSE's request wait (uninterruptibly once
    the server has read the request), in the `stat` child, not in this process."""
    fs = FsUsage((str(fuse_mount.path),), 0.3)
    assert fs.measure()[str(fuse_mount.path)].used_pct == 75.0
    fuse_mount.freeze()
    assert fs.measure()[str(fuse_mount.path)].reason.startswith("hung: ")
    (pid,) = fs.stuck_pids().values()
    assert kernel_wait(pid)[1] == "request_wait_answer"
    os.kill(pid, signal.SIGKILL)  # a fatal signal does not end a read-but-unanswered wait
    fuse_mount.thaw()  # the server answers: the child finishes dying, the thread reaps it
    assert fs.wait(DEADLINE_S)
    assert fs.stuck_pids() == {}
    assert fs.measure()[str(fuse_mount.path)].used_pct == 75.0


def test_a_thread_stuck_on_fuse_keeps_a_process_from_exiting(
    fuse_mount: FuseMount,
) -> None:
    """Why the child: statvfs in a thread of a process that then exits leaves a zombie
    leader and a D thread that SIGKILL does not end, until the server answers."""
    fuse_mount.freeze()
    code = ("import os, threading\n"
            f"threading.Thread(target=os.statvfs, args=({str(fuse_mount.path)!r},),"
            " daemon=True).start()\nprint('called', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "called"
        with pytest.raises(subprocess.TimeoutExpired):  # bounded: it does not exit
            proc.wait(2.0)
        proc.kill()
        with pytest.raises(subprocess.TimeoutExpired):  # not even killed
            proc.wait(1.0)
        stuck = [t for t in Path(f"/proc/{proc.pid}/task").iterdir()
                 if kernel_wait_task(proc.pid, t.name)[1] == "request_wait_answer"]
        assert len(stuck) == 1
    finally:
        fuse_mount.thaw()
        proc.wait(DEADLINE_S)


def kernel_wait_task(pid: int, tid: str) -> tuple[str, str]:
    base = Path(f"/proc/{pid}/task/{tid}")
    return (base / "stat").read_text().rsplit(")", 1)[1].split()[0], (base / "wchan").read_text()


def test_a_hung_mount_costs_one_thread_and_the_others_are_measured(
    fuse_mount: FuseMount, tmp_path: Path
) -> None:
    mounts = (str(fuse_mount.path), str(tmp_path))
    fs = FsUsage(mounts, 0.3)
    fuse_mount.freeze()
    for _ in range(4):
        readings = fs.measure()
        assert readings[str(fuse_mount.path)].reason.startswith("hung: ")
        assert readings[str(tmp_path)].used_pct is not None
    assert len(fs.stuck_pids()) == 1  # one stuck `stat`, never a pile of them
    fs.close()  # kills it; it dies once the server lets go (the fixture kills the server)


def test_a_one_shot_command_reports_the_hung_mount_and_exits(
    fuse_mount: FuseMount, tmp_path: Path
) -> None:
    """`nodewarden sample` leaves a thread stuck in the kernel behind, and still exits:
    exit_group() ends a thread in a killable wait."""
    config = tmp_path / "agent.toml"
    config.write_text(f'[metrics]\nfilesystems = ["{fuse_mount.path}", "{tmp_path}"]\n'
                      "fs_timeout_s = 0.5\n[udev]\nenabled = false\n")
    fuse_mount.freeze()
    proc = subprocess.run([sys.executable, "-m", "agent", "sample", "--json", "--config",
                           str(config)], cwd=REPO, capture_output=True, text=True,
                          timeout=DEADLINE_S, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    hung = f"fs.{fuse_mount.path}.used_pct"
    assert hung in doc["unavailable"]
    assert doc["reasons"][hung].startswith("hung: statvfs has not returned for ")
    assert 0.0 <= doc["metrics"][f"fs.{tmp_path}.used_pct"] <= 100.0


def test_the_daemon_starts_reports_and_stops_with_a_hung_mount(
    fuse_mount: FuseMount, tmp_path: Path
) -> None:
    state, mail = tmp_path / "state", tmp_path / "mail.log"
    mail.write_text("")
    config = tmp_path / "agent.toml"
    write_config(config, state, mail, extra=(
        f'[metrics]\nfilesystems = ["{fuse_mount.path}", "{tmp_path}"]\n'
        "fs_timeout_s = 0.5\n"))
    fuse_mount.freeze()  # hung before the agent starts: its first sample must not wait
    with running_agent(tmp_path, config, state) as agent:
        agent.wait_log(f"filesystem {fuse_mount.path} hung")
        assert agent.stop() == 0
    assert "STOPPING=1" in agent.messages
