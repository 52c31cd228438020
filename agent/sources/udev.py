"""Block devices appearing, disappearing and changing, from the kernel's uevents (pyudev).

The monitor listens to the *kernel* netlink source, not udevd's: it works in containers
and on hosts without udevd, but then events carry no `ID_*` properties (no udev
database), so model, serial and size are read from sysfs. When udevd did fill in
ID_MODEL / ID_SERIAL (`inventory()` on a host with a udev database), those win.

What the kernel really sends (measured on 6.x, see tests/integration/test_udev_real.py):
attaching a file to an existing loop device (`losetup -f --show FILE`) is a `change`
(size now non-zero); detaching (`losetup -d`) is two `change` events (size 0, the second
with DISK_MEDIA_CHANGE=1). `add` and `remove` come when a device itself appears or goes
(a disk plugged or pulled, /dev/loop-control LOOP_CTL_ADD / LOOP_CTL_REMOVE).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyudev

from agent.clock import Clock
from agent.model import DeviceAction, DeviceEvent

_ACTIONS: dict[str, DeviceAction] = {"add": "add", "remove": "remove", "change": "change"}


@dataclass(frozen=True)
class _Identity:
    model: str
    serial: str


def _read_attr(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def sysfs_identity(sys_path: Path) -> _Identity:
    """Model and serial of a block device from its sysfs directory.

    SCSI/SATA/NVMe put them in `device/model` and `device/serial` (or `device/wwid`);
    virtio-blk has only `serial` on the disk itself. A partition has neither: its
    parent disk's are used.
    """
    if (sys_path / "partition").exists():
        sys_path = sys_path.parent
    model = _read_attr(sys_path / "device" / "model")
    serial = _read_attr(sys_path / "device" / "serial") or _read_attr(sys_path / "serial")
    return _Identity(model, serial)


def _size_bytes(sys_path: Path) -> int | None:
    text = _read_attr(sys_path / "size")
    return int(text) * 512 if text.isdigit() else None


class UdevMonitor:
    """Kernel uevents of subsystem `block` as DeviceEvents; register `fileno()` in the
    selectors loop and call `poll()` when it is readable."""

    def __init__(self, clock: Clock, context: Any = None) -> None:
        self._clock = clock
        self._context = context if context is not None else pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source="kernel")
        self._monitor.filter_by("block")
        self._monitor.start()
        # the last identity seen per device: a removed device is gone from sysfs, so its
        # `remove` event is filled in from what was known while it was there
        self._known: dict[str, DeviceEvent] = {}

    def fileno(self) -> int:
        fd: int = self._monitor.fileno()
        return fd

    def poll(self) -> list[DeviceEvent]:
        """Every event waiting on the socket, without blocking."""
        events: list[DeviceEvent] = []
        while True:
            device = self._monitor.poll(timeout=0)
            if device is None:
                return events
            action = _ACTIONS.get(device.action or "")
            if action is None:
                continue  # bind/unbind/move/online: not a change of the block device
            events.append(self._event(device, action))

    def inventory(self) -> list[DeviceEvent]:
        """Every block device present now (action "present"), disks and partitions."""
        return [
            self._event(device, "present")
            for device in self._context.list_devices(subsystem="block")
        ]

    def close(self) -> None:
        sock = getattr(self._monitor, "_socket", None)
        if sock is not None:
            sock.close()

    def _event(self, device: Any, action: DeviceAction) -> DeviceEvent:
        name: str = device.sys_name
        props = device.properties
        if action == "remove":
            known = self._known.pop(name, None)
            base = DeviceEvent(
                t=self._clock.now(), action="remove", device=name,
                devtype=device.device_type or "",
            )
            if known is None:
                return base
            return replace(known, t=base.t, action="remove", size_bytes=None)
        sys_path = Path(device.sys_path)
        ident = sysfs_identity(sys_path)
        event = DeviceEvent(
            t=self._clock.now(),
            action=action,
            device=name,
            subsystem=device.subsystem or "block",
            devtype=device.device_type or "",
            model=props.get("ID_MODEL", "") or ident.model,
            serial=props.get("ID_SERIAL_SHORT", "") or props.get("ID_SERIAL", "")
            or ident.serial,
            size_bytes=_size_bytes(sys_path),
        )
        self._known[name] = event
        return event
