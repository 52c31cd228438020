"""Real mail servers for tests: a private dovecot and a private postfix on loopback.

Each is a context manager that starts the Debian binaries as root with its own
configuration, ports, state and queue directories under a fresh temp dir, waits until
the port answers (bounded poll, no fixed sleeps), and always stops the daemon and
removes the dir, even when the test or the start-up fails. Neither reads nor writes
/etc/dovecot, /etc/postfix, /var/lib/dovecot, /var/spool/postfix or the system log.

    with self_signed_cert(dir) as tls, running_dovecot(tls) as dc, running_postfix(
        tls, sasl_socket=dc.auth_socket) as pf: ...

TLS material comes from the `openssl` binary (Debian package openssl): one EC P-256
self-signed certificate for CN=localhost with SAN DNS:localhost and IP:127.0.0.1.

`HoldingListener` accepts connections and never answers: the thing a probe must time
out against.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.integration._wait import poll

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CANARY_USER = "canary"
CANARY_PASSWORD = 'c4n"ary pa\\ss'  # a space, a quote and a backslash: quoting must work


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], *logs: Path) -> None:
    """Poll until `port` accepts a connection; fail with the logs if the daemon died."""
    def listening() -> bool | None:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return True
        return None

    up = poll(listening, START_TIMEOUT_S, 0.02, give_up=lambda: proc.poll() is not None)
    if proc.poll() is not None:
        raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{_tails(logs)}")
    if not up:
        raise RuntimeError(f"port {port} not listening after {START_TIMEOUT_S}s:\n"
                           f"{_tails(logs)}")


def _tails(paths: tuple[Path, ...], lines: int = 30) -> str:
    out = []
    for path in paths:
        try:
            text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            text = "(none)"
        out.append(f"--- {path}\n{text}")
    return "\n".join(out)


@contextlib.contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    """A short (unix socket paths!) world-traversable temp dir, always removed."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)  # daemons drop privileges and must reach their files
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], pid: int | None = None) -> None:
    """SIGTERM the daemon (or `pid`, its master), wait; SIGKILL its process group if stuck."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid if pid is not None else proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)


def _config_processes(marker: str) -> list[int]:
    """Pids whose environment carries `marker` (how postfix children name their config)."""
    pids = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _reap_stragglers(marker: str) -> None:
    """Wait (bounded) for processes tagged `marker` to exit; SIGKILL what remains."""
    poll(lambda: True if not _config_processes(marker) else None, STOP_TIMEOUT_S)
    for pid in _config_processes(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- TLS
@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def make_self_signed(directory: Path) -> TlsFiles:
    """A self-signed certificate for localhost / 127.0.0.1, made by the openssl binary."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=30,
    )
    key.chmod(0o640)
    return TlsFiles(cert, key)


@contextlib.contextmanager
def self_signed_cert() -> Iterator[TlsFiles]:
    with _workdir("nw-tls-") as directory:
        yield make_self_signed(directory)


# --------------------------------------------------------------------------- dovecot
@dataclass(frozen=True)
class Dovecot:
    """A running private dovecot: ports, the canary account, the SASL socket for postfix."""

    imap_port: int
    imaps_port: int
    pop3_port: int
    pop3s_port: int
    user: str
    password: str
    password_file: Path  # the canary password plus a trailing newline, as operators write it
    auth_socket: Path
    log: Path
    root: Path


_DOVECOT_CONF = """\
# private test instance (tests/integration/_mailservers.py)
protocols = imap pop3
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = {instance}
log_path = {root}/dovecot.log
auth_verbose = no
auth_debug = no
# Fast failed logins for tests: no failure delay, and the per-IP penalty (anvil) made
# unreachable, or each wrong-password test waits 2..15 s more than the one before.
auth_failure_delay = 0
auth_mechanisms = plain login
disable_plaintext_auth = no
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
mail_location = maildir:{root}/mail/%u
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
"""


@contextlib.contextmanager
def running_dovecot(tls: TlsFiles) -> Iterator[Dovecot]:
    """`dovecot -c CONF -F` as a child, with a passwd-file canary user (mail as nobody)."""
    with _workdir("nw-dc-") as root:
        ports = {k: free_port() for k in ("imap", "imaps", "pop3", "pop3s")}
        (root / "mail").mkdir()
        nobody = 65534
        os.chown(root / "mail", nobody, nobody)
        users = root / "users"
        # passwd-file fields are ':'-separated; the canary password has none of ':' or '\n'.
        users.write_text(
            f"{CANARY_USER}:{{PLAIN}}{CANARY_PASSWORD}:{nobody}:{nobody}::"
            f"{root}/mail/{CANARY_USER}::\n"
        )
        users.chmod(0o644)
        password_file = root / "canary.pw"
        password_file.write_text(CANARY_PASSWORD + "\n")
        password_file.chmod(0o600)
        conf = root / "dovecot.conf"
        conf.write_text(
            _DOVECOT_CONF.format(
                root=root, instance=f"nw-test-{root.name}", cert=tls.cert, key=tls.key, **ports
            )
        )
        log = root / "dovecot.log"
        with (root / "stdout.log").open("wb") as out:
            proc = subprocess.Popen(
                ["dovecot", "-c", str(conf), "-F"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            for port in ports.values():
                wait_for_port(port, proc, log, root / "stdout.log")
            yield Dovecot(
                imap_port=ports["imap"], imaps_port=ports["imaps"],
                pop3_port=ports["pop3"], pop3s_port=ports["pop3s"],
                user=CANARY_USER, password=CANARY_PASSWORD, password_file=password_file,
                auth_socket=root / "run" / "auth-postfix", log=log, root=root,
            )
        finally:
            _stop(proc)


# --------------------------------------------------------------------------- postfix
@dataclass(frozen=True)
class Postfix:
    """A running private postfix: one smtpd on loopback with STARTTLS (and SASL if given)."""

    port: int
    config_dir: Path
    log: Path
    root: Path
    #: with `mailbox=True`: the Maildir every recipient at MAILBOX_DOMAIN is delivered to
    mailbox: Path | None = None


_MAIN_CF = """\
# private test instance (tests/integration/_mailservers.py)
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
multi_instance_enable = no
myhostname = nodewarden-test.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = {root}
maillog_file = {root}/postfix.log
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
"""

#: a mail domain the private postfix delivers itself (`running_postfix(mailbox=True)`)
MAILBOX_DOMAIN = "alerts.test"
_MAIN_CF_MAILBOX = """\
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = static:oncall/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 100
"""

_MAIN_CF_SASL = """\
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {socket}
"""

# No chroot (the private dirs are not in a chroot jail); only what smtpd needs.
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n  -  n  60    1  pickup
cleanup   unix  n  -  n  -     0  cleanup
qmgr      unix  n  -  n  300   1  qmgr
tlsmgr    unix  -  -  n  1000? 1  tlsmgr
rewrite   unix  -  -  n  -     -  trivial-rewrite
bounce    unix  -  -  n  -     0  bounce
defer     unix  -  -  n  -     0  bounce
trace     unix  -  -  n  -     0  bounce
verify    unix  -  -  n  -     1  verify
flush     unix  n  -  n  1000? 0  flush
proxymap  unix  -  -  n  -     -  proxymap
smtp      unix  -  -  n  -     -  smtp
relay     unix  -  -  n  -     -  smtp
showq     unix  n  -  n  -     -  showq
error     unix  -  -  n  -     -  error
retry     unix  -  -  n  -     -  error
discard   unix  -  -  n  -     -  discard
anvil     unix  -  -  n  -     1  anvil
scache    unix  -  -  n  -     1  scache
postlog   unix-dgram n - n - 1 postlogd
"""


@contextlib.contextmanager
def running_postfix(tls: TlsFiles, sasl_socket: Path | None = None, *,
                    mailbox: bool = False) -> Iterator[Postfix]:
    """`postfix -c DIR start-fg` with its own config, queue and data dirs.

    Root running `postfix -c` needs no alternate_config_directories entry in the system
    main.cf (that is only for the set-gid postdrop/postqueue). Stop = SIGTERM to the
    master (pid from the private queue's pid/master.pid); children carry
    MAIL_CONFIG=<our dir> in their environment, which is how leftovers are found.
    """
    with _workdir("nw-pf-") as root:
        port = free_port()
        config_dir = root / "etc"
        for sub in ("etc", "queue", "data"):
            (root / sub).mkdir()
        shutil.chown(root / "data", user="postfix")
        main_cf = _MAIN_CF.format(root=root, cert=tls.cert, key=tls.key)
        if sasl_socket is not None:
            main_cf += _MAIN_CF_SASL.format(socket=sasl_socket)
        master_cf = _MASTER_CF.format(port=port)
        maildir: Path | None = None
        if mailbox:  # the virtual agent delivers every MAILBOX_DOMAIN recipient here
            account = pwd.getpwnam("postfix")
            (root / "mail").mkdir()
            shutil.chown(root / "mail", user="postfix", group=account.pw_gid)
            main_cf += _MAIN_CF_MAILBOX.format(domain=MAILBOX_DOMAIN, root=root,
                                               uid=account.pw_uid, gid=account.pw_gid)
            master_cf += "virtual   unix  -  n  n  -  -  virtual\n"
            maildir = root / "mail" / "oncall"
        (config_dir / "main.cf").write_text(main_cf)
        (config_dir / "master.cf").write_text(master_cf)
        log = root / "postfix.log"
        with (root / "stdout.log").open("wb") as out:
            proc = subprocess.Popen(
                ["postfix", "-c", str(config_dir), "start-fg"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_for_port(port, proc, log, root / "stdout.log")
            yield Postfix(port=port, config_dir=config_dir, log=log, root=root, mailbox=maildir)
        finally:
            master: int | None = None
            with contextlib.suppress(OSError, ValueError):
                master = int((root / "queue" / "pid" / "master.pid").read_text().split()[0])
            _stop(proc, master)
            _reap_stragglers(f"MAIL_CONFIG={config_dir}")


# --------------------------------------------------------------------------- silent server
class HoldingListener:
    """Accepts every connection on loopback and never sends a byte (until closed)."""

    def __init__(self) -> None:
        self._sock = socket.create_server((LOOPBACK, 0))
        self.port: int = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="holding-listener", daemon=True)

    def _serve(self) -> None:
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def __enter__(self) -> HoldingListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in [*self._held, self._sock]:
            conn.close()


class FullBacklogListener:
    """A listener whose accept queue is full, so new SYNs are dropped: connect() hangs.

    listen(0) and never accept(); filler connections take the queue until one of them
    stays unconnected (a bounded loop), after which every new connect times out.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(0)
        self.port: int = self._sock.getsockname()[1]
        self._fillers: list[socket.socket] = []

    def __enter__(self) -> FullBacklogListener:
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._fillers.append(filler)
            filler.settimeout(0.2)
            try:
                filler.connect((LOOPBACK, self.port))
            except TimeoutError:
                return self  # this SYN was dropped: the queue is full
        self.__exit__()
        raise RuntimeError("could not fill the accept queue of a listen(0) socket")

    def __exit__(self, *exc: object) -> None:
        for sock in [*self._fillers, self._sock]:
            sock.close()
