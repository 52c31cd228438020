"""The agents' keys: one authorized_keys line per host, its forced command naming it.

`keys add HOST PUBKEY --group G [--role R]` records the host with its group and role in
the store and writes its line:

    restrict,command="nodewarden-coordinator session --host HOST" ssh-ed25519 AAAA...

`restrict` turns off forwarding, a pty and the user's rc; the forced command runs
whatever the client asked for, so the key can do nothing but speak for HOST. The file
is rewritten whole (temporary file, fsync, rename), one line per host: adding a host
again replaces its old key (a rotation). A key's comment is dropped (text others wrote).
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import tempfile
from pathlib import Path

KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com")
_MARK = re.compile(r'command="[^"]* session --host ([A-Za-z0-9._-]+)"')


def public_key(text: str) -> str:
    """`type base64` of an OpenSSH public key line; ValueError with the reason."""
    parts = text.strip().split()
    if len(parts) < 2:
        raise ValueError("a public key is 'TYPE BASE64 [COMMENT]'")
    kind, blob = parts[0], parts[1]
    if kind not in KEY_TYPES:
        raise ValueError(f"key type {kind[:40]!r} is not one of {', '.join(KEY_TYPES)}")
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        raise ValueError("the key's body is not base64") from None
    fields = _ssh_strings(raw)
    if fields is None or len(fields) < 2 or not all(fields[1:]):
        raise ValueError("the key's body is not an SSH public key (its fields do not add up)")
    if fields[0] != kind.encode():
        raise ValueError("the key's body does not hold its own type: not a public key")
    if kind == "ssh-ed25519" and (len(fields) != 2 or len(fields[1]) != 32):
        raise ValueError("an ssh-ed25519 key holds 32 bytes of key")
    return f"{kind} {blob}"


def _ssh_strings(raw: bytes) -> list[bytes] | None:
    """The length-prefixed strings of an SSH wire blob, None unless they fill it exactly."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            return None
        size = int.from_bytes(raw[at:at + 4], "big")
        at += 4
        if at + size > len(raw):
            return None
        out.append(raw[at:at + size])
        at += size
    return out


#: what a forced command may hold unquoted: no space, quote, `$`, `;` or newline
PLAIN = re.compile(r"[A-Za-z0-9/._-]+")


def key_line(command: str, config: Path | None, host: str, key: str) -> str:
    """The host's authorized_keys line; ValueError when the config path cannot be
    written into a forced command as it is (it must be absolute and plain)."""
    config_arg = ""
    if config is not None:
        path = str(config.absolute())
        if not PLAIN.fullmatch(path):
            raise ValueError(f"the configuration's path {path[:200]!r} cannot go into a forced "
                             "command: use a path of letters, digits, '/', '.', '_' and '-'")
        config_arg = f" --config {path}"
    return f'restrict,command="{command}{config_arg} session --host {host}" {key}'


def has_line(path: Path, line: str) -> bool:
    """Whether `path` holds `line` already (a `keys add` that changes nothing)."""
    try:
        return line in path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        return False


def write_key(path: Path, host: str, line: str | None) -> None:
    """`path` with `line` as HOST's only line (others' lines kept as they were; None:
    HOST's line removed), under a lock: two `keys add` at once both land."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (path.parent / f".{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _rewrite(path, host, line)


def _rewrite(path: Path, host: str, line: str | None) -> None:
    kept = []
    if path.exists():
        for old in path.read_text("utf-8").splitlines():
            mark = _MARK.search(old)
            if old.strip() and not (mark and mark.group(1) == host):
                kept.append(old)
    if line is not None:
        kept.append(line)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".authorized_keys.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{k}\n" for k in kept))
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
