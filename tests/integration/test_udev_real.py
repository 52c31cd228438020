"""The udev monitor against the real kernel: loop devices attached, detached, created and
removed by the test. No udevd is needed (kernel netlink source).

What the kernel sends (6.x, checked here): attaching a file to an existing loop device is
a `change` with the new size; detaching is `change` (size 0, twice: the second carries
DISK_MEDIA_CHANGE=1). A loop device created through /dev/loop-control is an `add`, and
removed through it a `remove`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import selectors
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.model import DeviceEvent
from agent.sources.udev import UdevMonitor, sysfs_identity

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
SIZE = 4 * 1024 * 1024


@pytest.fixture
def monitor() -> Iterator[UdevMonitor]:
    m = UdevMonitor(SystemClock())
    yield m
    m.close()


def wait_for(
    monitor: UdevMonitor, done: Callable[[DeviceEvent], bool], timeout_s: float = 10.0
) -> list[DeviceEvent]:
    """Events until one satisfies `done` (waits on the monitor's fd, never sleeps)."""
    seen: list[DeviceEvent] = []
    with selectors.DefaultSelector() as sel:
        sel.register(monitor.fileno(), selectors.EVENT_READ)
        while sel.select(timeout_s):
            for event in monitor.poll():
                seen.append(event)
                if done(event):
                    return seen
    raise AssertionError(f"no such event within {timeout_s} s; saw {seen}")


@pytest.mark.realparts
def test_loop_attach_is_change_with_size_and_detach_is_change_to_zero(
    monitor: UdevMonitor, tmp_path: Path
) -> None:
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(SIZE)
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    name = Path(dev).name
    try:
        seen = wait_for(monitor, lambda e: e.device == name and e.size_bytes == SIZE)
        attached = seen[-1]
        assert (attached.action, attached.devtype, attached.subsystem) == (
            "change", "disk", "block"
        )
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    seen = wait_for(monitor, lambda e: e.device == name and e.size_bytes == 0)
    assert seen[-1].action == "change"


def _free_loop_index() -> int:
    taken = {p.name for p in Path("/sys/block").iterdir()}
    return next(n for n in range(200, 100000) if f"loop{n}" not in taken)


@pytest.mark.realparts
def test_loop_device_created_is_add_and_inventoried_and_removed_is_remove(
    monitor: UdevMonitor,
) -> None:
    ctl = os.open("/dev/loop-control", os.O_RDWR)
    index: int | None = None
    try:
        for _ in range(20):
            candidate = _free_loop_index()
            try:
                index = fcntl.ioctl(ctl, LOOP_CTL_ADD, candidate)
                break
            except OSError as exc:  # someone took it between the listing and the ioctl
                if exc.errno != errno.EEXIST:
                    raise
        assert index is not None
        name = f"loop{index}"
        seen = wait_for(monitor, lambda e: e.device == name)
        assert (seen[-1].action, seen[-1].devtype, seen[-1].size_bytes) == ("add", "disk", 0)

        present = {e.device: e for e in monitor.inventory()}
        assert present[name].action == "present"

        fcntl.ioctl(ctl, LOOP_CTL_REMOVE, index)
        index = None
        seen = wait_for(monitor, lambda e: e.device == name)
        assert seen[-1].action == "remove"
        assert seen[-1].size_bytes is None
    finally:
        if index is not None:
            fcntl.ioctl(ctl, LOOP_CTL_REMOVE, index)
        os.close(ctl)


@pytest.mark.realparts
def test_inventory_sizes_match_sysfs(monitor: UdevMonitor) -> None:
    inventory = monitor.inventory()
    assert inventory, "a machine with no block device at all?"
    for event in inventory:
        size_file = Path("/sys/class/block") / event.device / "size"
        if size_file.exists():
            assert event.size_bytes == int(size_file.read_text()) * 512, event.device


def test_identity_from_sysfs_scsi_virtio_and_partition(tmp_path: Path) -> None:
    sda = tmp_path / "sda"
    (sda / "device").mkdir(parents=True)
    (sda / "device" / "model").write_text("Samsung SSD 860  \n")
    (sda / "device" / "serial").write_text("S3Z9NB0K123456\n")
    (sda / "sda1").mkdir()
    (sda / "sda1" / "partition").write_text("1\n")
    vda = tmp_path / "vda"
    vda.mkdir()
    (vda / "serial").write_text("overlayblk\n")

    assert sysfs_identity(sda).model == "Samsung SSD 860"
    assert sysfs_identity(sda / "sda1").serial == "S3Z9NB0K123456"
    assert (sysfs_identity(vda).model, sysfs_identity(vda).serial) == ("", "overlayblk")
