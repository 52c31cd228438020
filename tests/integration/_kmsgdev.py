"""A kernel log of its own for each simulated host: a FUSE file that reads like /dev/kmsg.

    python -m tests.integration._kmsgdev MOUNTPOINT NAME...

Each NAME is a file MOUNTPOINT/NAME: one host's kernel ring. It behaves as the agent's
`DevKmsg` (agent/sources/kmsg.py) needs /dev/kmsg to:

* each read() returns ONE record, `PRIO,SEQ,USEC,-;TEXT\\n`, and EAGAIN when no record is
  new (the agent opens it O_NONBLOCK);
* lseek to 0 goes back to the oldest record (a read at offset 0 starts from there);
* poll/epoll tells when a record waits (FUSE_POLL, and the kernel's poll wake-up
  notification when one arrives).

Why the fleet test needs it: every host of a real incident has a kernel of its own, and
this machine's kernel has no NFS, CIFS, Ceph or iSCSI client to print the real line. A
line written to /dev/kmsg from userspace arrives with facility 1 and is untrusted by
design (an agent never acts on it, the coordinator never makes an incident of it), so
the one place a kernel record can come from is the agent's configured `[kmsg] path`.
The records here carry facility 0 and the kernel's own text; the agent reads them with
its production code.

The test writes commands on stdin, one JSON object a line: `{"name": N, "text": T}`
(optionally `"level"`, default 5, pr_notice); the server appends the record and answers
`emitted N SEQ`. It prints `ready` once the kernel's INIT is answered. Killing it
aborts the mount's connection; `tests.integration._fuse.unmount` detaches it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration._fuse import ATTR_OUT, IN_HEADER, INIT_OUT, OUT_HEADER, read_request

FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR = 1, 2, 3
FUSE_OPEN, FUSE_READ, FUSE_RELEASE, FUSE_FLUSH, FUSE_INIT = 14, 15, 18, 25, 26
FUSE_INTERRUPT, FUSE_POLL, FUSE_BATCH_FORGET = 36, 40, 42
NO_REPLY = (FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT)
FUSE_NOTIFY_POLL = 1
FUSE_POLL_SCHEDULE_NOTIFY = 1
FOPEN_DIRECT_IO = 1
POLLIN = select.POLLIN

#: fuse_entry_out: nodeid generation entry_valid attr_valid entry_nsec attr_nsec, fuse_attr
ENTRY_OUT = struct.Struct("=QQQQII" + "QQQQQQIIIIIIIIII")
OPEN_OUT = struct.Struct("=QII")  # fh open_flags padding
READ_IN = struct.Struct("=QQI")  # fh offset size (the rest is not needed)
POLL_IN = struct.Struct("=QQII")  # fh kh flags events
POLL_OUT = struct.Struct("=II")  # revents padding
NOTIFY_POLL = struct.Struct("=Q")  # kh
ROOT = 1


@dataclass
class Handle:
    ring: str
    cursor: int = 0
    #: the kernel's poll handle: told when a record arrives
    kh: int | None = None


@dataclass
class Device:
    rings: dict[str, list[bytes]]
    handles: dict[int, Handle] = field(default_factory=dict)
    next_fh: int = 1

    def emit(self, name: str, text: str, level: int) -> int:
        ring = self.rings[name]
        seq = len(ring)
        usec = time.monotonic_ns() // 1000  # the kernel's clock: usec since boot
        ring.append(f"{level},{seq},{usec},-;{text}\n".encode())
        return seq


def _attr(nodeid: int) -> tuple[int, ...]:
    mode = 0o40555 if nodeid == ROOT else 0o100444
    return (nodeid, 0, 0, 0, 0, 0, 0, 0, 0, mode, 2 if nodeid == ROOT else 1, 0, 0, 0,
            4096, 0)


class Server:
    def __init__(self, mountpoint: Path, names: list[str]) -> None:
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other"
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"nwkmsg", os.fsencode(mountpoint), b"fuse.nwkmsg", 0,
                      opts.encode()) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(mountpoint))
        self.names = names
        self.dev = Device({n: [] for n in names})

    def reply(self, unique: int, body: bytes = b"", error: int = 0) -> None:
        self._write(OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError as exc:  # interrupted meanwhile, or a poll handle gone: nobody waits
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                raise

    def serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd, sys.stdin], [], [])
            if sys.stdin in ready:
                line = sys.stdin.readline()
                if not line:
                    return
                self._command(json.loads(line))
            if self.fd in ready:
                data = read_request(self.fd)
                if data is None:
                    return
                self._request(data)

    def _command(self, cmd: dict[str, object]) -> None:
        name = str(cmd["name"])
        seq = self.dev.emit(name, str(cmd["text"]), int(str(cmd.get("level", 5))))
        for handle in self.dev.handles.values():
            if handle.ring == name and handle.kh is not None:
                self._write(OUT_HEADER.pack(OUT_HEADER.size + NOTIFY_POLL.size,
                                            FUSE_NOTIFY_POLL, 0) + NOTIFY_POLL.pack(handle.kh))
        print(f"emitted {name} {seq}", flush=True)

    def _request(self, data: bytes) -> None:
        _, opcode, unique, nodeid, _, _, _, _, _ = IN_HEADER.unpack_from(data)
        body = data[IN_HEADER.size:]
        if opcode == FUSE_INIT:
            _, minor = struct.unpack_from("=II", body)
            self.reply(unique, INIT_OUT.pack(7, min(minor, 31), 0, 0, 1, 1, 4096, 1, 0, 0, 0))
            print("ready", flush=True)
        elif opcode == FUSE_LOOKUP:
            name = body.split(b"\0", 1)[0].decode()
            if name in self.names:
                node = self.names.index(name) + 2
                self.reply(unique, ENTRY_OUT.pack(node, 0, 1, 1, 0, 0, *_attr(node)))
            else:
                self.reply(unique, error=-errno.ENOENT)
        elif opcode == FUSE_GETATTR:
            self.reply(unique, ATTR_OUT.pack(1, 0, 0, *_attr(nodeid)))
        elif opcode == FUSE_OPEN:
            fh, self.dev.next_fh = self.dev.next_fh, self.dev.next_fh + 1
            self.dev.handles[fh] = Handle(self.names[nodeid - 2])
            self.reply(unique, OPEN_OUT.pack(fh, FOPEN_DIRECT_IO, 0))
        elif opcode == FUSE_READ:
            self._read(unique, *READ_IN.unpack_from(body))
        elif opcode == FUSE_POLL:
            self._poll(unique, *POLL_IN.unpack_from(body))
        elif opcode == FUSE_RELEASE:
            self.dev.handles.pop(READ_IN.unpack_from(body)[0], None)
            self.reply(unique)
        elif opcode == FUSE_FLUSH:
            self.reply(unique)
        elif opcode not in NO_REPLY:
            self.reply(unique, error=-errno.ENOSYS)

    def _read(self, unique: int, fh: int, offset: int, size: int) -> None:
        handle = self.dev.handles[fh]
        if offset == 0:  # lseek(fd, 0, SEEK_SET): the oldest record, as /dev/kmsg
            handle.cursor = 0
        ring = self.dev.rings[handle.ring]
        if handle.cursor >= len(ring):
            self.reply(unique, error=-errno.EAGAIN)
            return
        record = ring[handle.cursor]
        if len(record) > size:
            self.reply(unique, error=-errno.EINVAL)  # as the kernel for a short buffer
            return
        handle.cursor += 1
        self.reply(unique, record)

    def _poll(self, unique: int, fh: int, kh: int, flags: int, _events: int) -> None:
        handle = self.dev.handles[fh]
        if flags & FUSE_POLL_SCHEDULE_NOTIFY:
            handle.kh = kh
        waiting = handle.cursor < len(self.dev.rings[handle.ring])
        self.reply(unique, POLL_OUT.pack(POLLIN if waiting else 0, 0))


def main() -> int:
    Server(Path(sys.argv[1]), sys.argv[2:]).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
