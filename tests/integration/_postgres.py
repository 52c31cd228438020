"""A real PostgreSQL server for the store's tests: Debian's `postgresql`, its programs
found under /usr/lib/postgresql/VERSION/bin (the newest there), never through PATH.

`running_postgres()` makes a cluster in a fresh temp dir with initdb, as the
unprivileged `postgres` user (PostgreSQL refuses root), with trust authentication, and
starts it in the foreground on 127.0.0.1 at a free port, its Unix socket in the temp
dir (in /dev/shm where there is one). The machine's own clusters are never touched. fsync
is off: what is tested is the coordinators' serialisation and a client's death, never
the server's own crash. Whatever
happens, the server is stopped (`pg_ctl stop -m immediate`, then killed) and the dir
removed. No PostgreSQL installed is an error, never a skip (.ci/run installs it).

`Cluster.database()` gives a test a database of its own: a copy of one migrated once
(CREATE DATABASE … TEMPLATE, quicker than migrating each), or an empty one; dropped
after the test.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from coordinator.pgstore import PostgresStore
from tests.integration._mailservers import LOOPBACK, free_port
from tests.integration._proctree import kill_tree
from tests.integration._wait import poll

USER = "postgres"
#: where the cluster's temp dir goes when the machine has it: memory, so that a busy
#: disk does not slow every test's CREATE DATABASE (nothing here tests the disk)
RAM = "/dev/shm"
START_TIMEOUT_S = 60.0
#: the test databases' names: t1, t2, ...
_NAMES = itertools.count(1)


def server_program(name: str) -> str:
    """`name` of the newest PostgreSQL installed (/usr/lib/postgresql/N/bin/name)."""
    found = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if not found:
        raise RuntimeError(f"no /usr/lib/postgresql/*/bin/{name}: install Debian's "
                           "postgresql (.ci/run does)")
    return max(found, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))


@dataclass(frozen=True)
class Cluster:
    work: Path
    port: int
    log: Path

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@{LOOPBACK}:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kwargs: Any
                ) -> psycopg.Connection[tuple[Any, ...]]:
        """A plain connection, the test's own (autocommit unless told otherwise)."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url(database), **kwargs)

    @contextlib.contextmanager
    def database(self, *, migrated: bool = True) -> Iterator[str]:
        """A new database's URL: migrated to the latest schema, or empty."""
        name = f"t{next(_NAMES)}"
        template = "nw_migrated" if migrated else "template0"
        with self.connect() as admin:
            # a file copy: with fsync off, ten times quicker than the WAL-logged default
            admin.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        try:
            yield self.url(name)
        finally:
            with self.connect() as admin:
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _as_postgres(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, user=USER, group=USER, extra_groups=[], text=True,
                          capture_output=True, check=False, timeout=120, **kwargs)


@contextlib.contextmanager
def running_postgres() -> Iterator[Cluster]:
    """A cluster as above, its template database `nw_migrated` at the latest schema."""
    work = Path(tempfile.mkdtemp(prefix="nw-pg-", dir=RAM if Path(RAM).is_dir() else None))
    proc: subprocess.Popen[bytes] | None = None
    try:
        shutil.chown(work, USER, USER)
        data, log = work / "data", work / "postgres.log"
        made = _as_postgres([server_program("initdb"), "-D", str(data), "-U", USER,
                             "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                            cwd=work)
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr}")
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [server_program("postgres"), "-D", str(data), "-p", str(port),
                 "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={work}",
                 "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=100"],
                user=USER, group=USER, extra_groups=[], stdout=out, stderr=out,
                stdin=subprocess.DEVNULL, cwd=work, start_new_session=True)
        cluster = Cluster(work, port, log)
        _wait_until_up(cluster, proc)
        _make_template(cluster)
        yield cluster
    finally:
        if proc is not None:
            _stop(proc, work / "data")
        shutil.rmtree(work, ignore_errors=True)


def _wait_until_up(cluster: Cluster, proc: subprocess.Popen[bytes]) -> None:
    def up() -> bool | None:
        with contextlib.suppress(psycopg.OperationalError), \
                cluster.connect(connect_timeout=2):
            return True
        return None

    if not poll(up, START_TIMEOUT_S, 0.05, give_up=lambda: proc.poll() is not None):
        raise RuntimeError(f"PostgreSQL did not start: {cluster.log.read_text()[-2000:]}")


def _make_template(cluster: Cluster) -> None:
    with cluster.connect() as admin:
        admin.execute("CREATE DATABASE nw_migrated TEMPLATE template0")
    PostgresStore(cluster.url("nw_migrated")).close()


def _stop(proc: subprocess.Popen[bytes], data: Path) -> None:
    """`pg_ctl stop -m immediate`; then whatever of the server is left, killed."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        _as_postgres([server_program("pg_ctl"), "stop", "-D", str(data), "-m", "immediate",
                      "-w", "-t", "30"])
    kill_tree(proc)
