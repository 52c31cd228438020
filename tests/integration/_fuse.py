"""A real mount that can hang: a minimal FUSE filesystem served from /dev/fuse.

    python -m tests.integration._fuse MOUNTPOINT

It mounts an empty directory at MOUNTPOINT (mount(2) with a /dev/fuse fd, as root), says
`ready` on stdout once the kernel's INIT is answered, and answers STATFS with 1000
blocks, 250 free, 250 available (df: 75 % used). SIGUSR1 freezes it: STATFS requests are
read and never answered, so a statvfs() on the mount blocks in the kernel exactly as on
a hard NFS mount whose server is gone. SIGUSR2 thaws it and answers what waited.

Ending the process (any signal) closes /dev/fuse, which aborts the connection: every
waiting call returns ENOTCONN. `unmount()` then detaches the mount point.
No library: the protocol is include/uapi/linux/fuse.h, of which this needs four opcodes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
import sys
from pathlib import Path

FUSE_GETATTR = 3
FUSE_FORGET = 2
FUSE_STATFS = 17
FUSE_INIT = 26
FUSE_INTERRUPT = 36
FUSE_BATCH_FORGET = 42
NO_REPLY = (FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT)

IN_HEADER = struct.Struct("=IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("=IiQ")  # len error unique
#: fuse_init_out (64 bytes): major minor max_readahead flags max_background
#: congestion_threshold max_write time_gran max_pages map_alignment flags2, then zeros
INIT_OUT = struct.Struct("=IIIIHHIIHHI28x")
#: fuse_kstatfs: blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
KSTATFS = struct.Struct("=QQQQQIIII24x")
#: fuse_attr_out: attr_valid attr_valid_nsec dummy, then fuse_attr (88 bytes)
ATTR_OUT = struct.Struct("=QII" + "QQQQQQIIIIIIIIII")
MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def unmount(mountpoint: Path) -> None:
    """Detach the mount point (lazy: works while the connection is dead or busy)."""
    if _libc().umount2(os.fsencode(mountpoint), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted (any more)
            raise OSError(err, os.strerror(err), str(mountpoint))


class Server:
    def __init__(self, mountpoint: Path) -> None:
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other"
        if _libc().mount(b"nwtest", os.fsencode(mountpoint), b"fuse.nwtest", 0,
                         opts.encode()) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(mountpoint))
        self.frozen = False
        self.waiting: list[int] = []
        signal.signal(signal.SIGUSR1, self._freeze)
        signal.signal(signal.SIGUSR2, self._thaw)

    def _freeze(self, *_: object) -> None:
        self.frozen = True

    def _thaw(self, *_: object) -> None:
        self.frozen = False
        for unique in self.waiting:
            self._statfs(unique)
        self.waiting.clear()

    def reply(self, unique: int, body: bytes = b"", error: int = 0) -> None:
        try:
            os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body)
        except OSError as exc:  # the request was interrupted meanwhile: nobody waits
            if exc.errno != errno.ENOENT:
                raise

    def _statfs(self, unique: int) -> None:
        self.reply(unique, KSTATFS.pack(1000, 250, 250, 100, 50, 4096, 255, 4096, 0))

    def serve(self) -> None:
        while True:
            data = read_request(self.fd)
            if data is None:
                return
            _, opcode, unique, _, _, _, _, _, _ = IN_HEADER.unpack_from(data)
            if opcode == FUSE_INIT:
                _, minor = struct.unpack_from("=II", data, IN_HEADER.size)
                self.reply(unique, INIT_OUT.pack(7, min(minor, 31), 0, 0, 1, 1, 4096, 1,
                                                 1, 0, 0))
                print("ready", flush=True)
            elif opcode == FUSE_STATFS:
                if self.frozen:
                    self.waiting.append(unique)  # never answered while frozen
                else:
                    self._statfs(unique)
            elif opcode == FUSE_GETATTR:
                attr = (1, 0, 0, 0, 0, 0, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
                self.reply(unique, ATTR_OUT.pack(1, 0, 0, *attr))
            elif opcode not in NO_REPLY:
                self.reply(unique, error=-errno.ENOSYS)


def main() -> int:
    Server(Path(sys.argv[1])).serve()
    return 0


def read_request(fd: int) -> bytes | None:
    """The kernel's next request on /dev/fuse, or None once the mount is gone."""
    try:
        return os.read(fd, 1 << 17)
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # unmounted
            return None
        raise


if __name__ == "__main__":
    sys.exit(main())

