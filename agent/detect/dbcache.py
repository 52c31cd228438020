"""A cache of compiled matcher databases on disk, that another user cannot poison.

Compiling the catalog's hyperscan databases takes about 0.3 s, which `scan`, `check`,
`simulate` and every daemon start or reload would pay; loading a serialized one takes
0.1 ms. The agent runs as root and a database decides which lines are even looked at,
so an entry is used only when nobody but us (or root) could have written it:

* every directory from `/` down to the cache must be a real directory (no symlink),
  owned by root or by us, and not writable by group or others unless sticky (`/tmp`);
* the cache directory itself must be ours, not writable by group or others (it is made
  0700 when missing);
* an entry is opened relative to the directory's fd with O_NOFOLLOW, must be a regular
  file of ours with one link and no group/other write bit, and carries the digest of its
  key and of its payload: a changed, torn or foreign entry is rebuilt, never trusted;
* entries are written to a temporary file and renamed into place (atomic).

A cache that cannot be used or written (read-only file system, full disk, unsafe
modes) is skipped silently: the caller compiles, as it would without a cache. Where:
`NODEWARDEN_CACHE` (`off` turns it off; an absolute path chooses the directory), else
`/var/cache/nodewarden` for root and `$XDG_CACHE_HOME/nodewarden` (default
`~/.cache/nodewarden`) for others (docs/signatures.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

try:  # BLAKE2 built into CPython: hashlib would load OpenSSL's libcrypto (3.4 MiB of RSS
    from _blake2 import blake2b  # for the daemon's life) to give the same digest kind
except ImportError:  # pragma: no cover (a Python built without it)
    from hashlib import blake2b

CACHE_ENV = "NODEWARDEN_CACHE"
OFF_VALUES = frozenset({"off", "0", "no", "false", "none"})
ROOT_CACHE_DIR = Path("/var/cache/nodewarden")
MAGIC = b"nodewarden-cache 1\n"
_DIGEST = 32
#: an entry larger than this is not one of ours (the catalog's databases are ~0.3 MiB)
MAX_ENTRY_BYTES = 64 << 20
#: entries kept; the oldest go when a new one is written (a changed catalog leaves one)
MAX_ENTRIES = 16
_SUFFIX = ".db"
_log = logging.getLogger(__name__)


class UnsafeCache(OSError):
    """Another user could have written this path: it is not used."""


def _check_owner_and_mode(st: os.stat_result, path: str, *, euid: int, sticky_ok: bool,
                          root_ok: bool) -> None:
    owners = {euid, 0} if root_ok else {euid}
    if st.st_uid not in owners:
        raise UnsafeCache(errno.EPERM, f"owned by uid {st.st_uid}", path)
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        raise UnsafeCache(errno.EPERM, f"mode {stat.S_IMODE(st.st_mode):04o}", path)


def check_ancestors(directory: Path, euid: int, *, missing_ok: bool = False) -> None:
    """Raise UnsafeCache unless every directory above `directory` is safe (docstring);
    `missing_ok`: the check stops at the first one that does not exist (yet)."""
    for parent in reversed(directory.parents):
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            if missing_ok:
                return
            raise
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeCache(errno.ENOTDIR, "not a directory (a symlink?)", str(parent))
        _check_owner_and_mode(st, str(parent), euid=euid, sticky_ok=True, root_ok=True)


@dataclass(frozen=True)
class DatabaseCache:
    """Entries (bytes) by key (bytes) in one directory; see the module docstring."""

    directory: Path

    def _open_dir(self, create: bool) -> int:
        """The cache directory's fd, after every check; OSError when it is unusable."""
        euid = os.geteuid()
        if not self.directory.is_absolute():
            raise UnsafeCache(errno.EINVAL, "not an absolute path", str(self.directory))
        if create and not os.path.lexists(self.directory):
            check_ancestors(self.directory, euid, missing_ok=True)
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_ancestors(self.directory, euid)
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeCache(exc.errno, "not a directory (a symlink?)",
                                  str(self.directory)) from exc
            raise
        try:
            st = os.fstat(fd)
            _check_owner_and_mode(st, str(self.directory), euid=euid, sticky_ok=False,
                                  root_ok=False)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _name(key: bytes) -> str:
        return digest(key).hexdigest() + _SUFFIX

    def load(self, key: bytes) -> bytes | None:
        """The payload stored under `key`, or None (missing, unsafe, changed, corrupt)."""
        try:
            dir_fd = self._open_dir(create=False)
        except OSError as exc:
            _skip("read", self.directory, exc)
            return None
        try:
            blob = _read_entry(dir_fd, self._name(key))
        except OSError as exc:
            _skip("read", self.directory / self._name(key), exc)
            return None
        finally:
            os.close(dir_fd)
        return unpack(blob, key)

    def store(self, key: bytes, payload: bytes) -> None:
        """Write the entry atomically; any failure leaves the cache as it was, silently."""
        try:
            dir_fd = self._open_dir(create=True)
        except OSError as exc:
            _skip("write", self.directory, exc)
            return
        try:
            _write_entry(dir_fd, self._name(key), pack(key, payload))
            _prune(dir_fd, keep=self._name(key))
        except OSError as exc:
            _skip("write", self.directory / self._name(key), exc)
        finally:
            os.close(dir_fd)


def _skip(what: str, path: Path, exc: OSError) -> None:
    if isinstance(exc, UnsafeCache):
        # someone else could write here: worth an operator's look, never fatal
        _log.warning("not using the database cache: %s: %s", exc.filename, exc.strerror)
    elif exc.errno != errno.ENOENT:
        _log.debug("database cache %s skipped: %s: %s", what, path, exc)


def pack(key: bytes, payload: bytes) -> bytes:
    """An entry: magic, the key's digest, the payload's digest, the payload."""
    return (MAGIC + digest(key).digest() + digest(payload).digest()
            + payload)


def unpack(blob: bytes, key: bytes) -> bytes | None:
    """The payload when `blob` is an intact entry for `key`, else None."""
    head = len(MAGIC)
    if not blob.startswith(MAGIC) or len(blob) < head + 2 * _DIGEST:
        return None
    if blob[head:head + _DIGEST] != digest(key).digest():
        return None
    payload = blob[head + 2 * _DIGEST:]
    if blob[head + _DIGEST:head + 2 * _DIGEST] != digest(payload).digest():
        return None
    return payload


def _read_entry(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UnsafeCache(errno.EPERM, "not a regular file with one link", name)
        _check_owner_and_mode(st, name, euid=os.geteuid(), sticky_ok=False, root_ok=False)
        if st.st_size > MAX_ENTRY_BYTES:
            raise OSError(errno.EFBIG, "too large", name)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_entry(dir_fd: int, name: str, blob: bytes) -> None:
    tmp = f".{name}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _prune(dir_fd: int, keep: str) -> None:
    """Remove the oldest entries beyond MAX_ENTRIES (never `keep`)."""
    entries = []
    for name in os.listdir(dir_fd):
        if name.endswith(_SUFFIX) and name != keep and not name.startswith("."):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            entries.append((st.st_mtime_ns, name))
    entries.sort(reverse=True)
    for _mtime, name in entries[MAX_ENTRIES - 1:]:
        os.unlink(name, dir_fd=dir_fd)


def default_cache(environ: Mapping[str, str] | None = None,
                  euid: int | None = None) -> DatabaseCache | None:
    """The cache the environment asks for (module docstring); None when it is off."""
    env = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    wanted = env.get(CACHE_ENV, "").strip()
    if wanted.lower() in OFF_VALUES:
        return None
    if wanted:
        path = Path(wanted)
        return DatabaseCache(path) if path.is_absolute() else None
    if euid == 0:
        return DatabaseCache(ROOT_CACHE_DIR)
    xdg = env.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return DatabaseCache(base / "nodewarden")


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def digest(data: bytes = b"") -> Digest:
    """A 32-byte BLAKE2b of `data`, to update further or read."""
    return blake2b(data, digest_size=_DIGEST)
