"""A small tmpfs that fills up: a real full disk for the tests of what happens then."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("64k"), unmounted and removed afterwards even on failure."""
    mnt = Path(tempfile.mkdtemp(prefix="nw-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "nwfull", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def fill_up(path: Path) -> None:
    """Write zeros to `path` until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
