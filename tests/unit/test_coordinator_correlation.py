"""Correlation against the signature catalog, and an incident's pages (issue 9 item 5):
the problems correlated by default are exactly the catalog's whose subject names a shared
dependency, and ten clients paging about the filer are one alert, not ten."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.session import Session
from coordinator.settings import CoordinatorSettings
from coordinator.store import HostRecord, SqliteStore, Tx
from tests.unit._signatures import builtin

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample"
#: signature subjects that name what many hosts share: a file server, a Ceph daemon
DEPENDENCY_SUBJECTS = {"server", "daemon"}


def test_the_default_correlation_is_the_catalogs_dependencies() -> None:
    """A correlated problem whose subject were the host's own (a hung task's name, an
    iSCSI session or multipath path number) would make two hosts one false incident and
    hold both; a dependency the catalog names but the default forgot (CIFS) would page
    once per client."""
    by_problem: dict[str, set[str]] = {}
    for sig in builtin().signatures:
        if not sig.recovery:
            by_problem.setdefault(sig.problem, set()).add(
                sig.subject if sig.subject_is_group else f"literal {sig.subject}")
    defaults = set(CoordinatorSettings().correlate)
    assert {p for p in defaults if not by_problem.get(p, set()) <= DEPENDENCY_SUBJECTS
            or p not in by_problem} == set()
    assert {p for p, subjects in by_problem.items()
            if subjects <= DEPENDENCY_SUBJECTS} == defaults


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "fleet.db")

    def add(tx: Tx) -> None:
        for i in range(1, 5):
            tx.put_host(HostRecord(f"mx{i}", "mail", "mail", KEY, 0.0, None))

    s.run(add)
    yield s
    s.close()


def greeted(store: SqliteStore, host: str) -> Session:
    record = store.run(lambda tx: tx.host(host))
    assert record is not None
    s = Session(record, store, CoordinatorSettings(), lambda: 1_000_000.0)
    assert say(s, type="hello", id="h", proto=1)["type"] == "ack"
    return s


def say(s: Session, **msg: Any) -> dict[str, Any]:
    return s.answer(json.dumps(msg).encode() + b"\n")


def nfs_down(store: SqliteStore, host: str, problem: str = "nfs-not-responding",
             subject: str = "nas-a1") -> None:
    """What a client's agent sends: its finding, then its ladder's page (enforced)."""
    s = greeted(store, host)
    assert say(s, type="finding", id=f"f-{problem}", problem=problem, subject=subject,
               severity="error")["type"] == "ack"
    assert say(s, type="plan", id=f"p-{problem}", action="page", subject="oncall", problem=problem,
               finding_subject=subject, execute=True,
               summary=f"page: {problem} {subject} seen from {host}")["type"] == "ack"


def test_an_incidents_pages_are_its_one_alert(store: SqliteStore) -> None:
    def alerts() -> list[tuple[str, str, bool]]:
        return [(a[1], a[2], a[6] is None) for a in store.run(lambda tx: tx.alerts())]

    nfs_down(store, "mx1")  # one host's view: its page is a person's alert
    assert alerts() == [("page", "mx1/nfs-not-responding/nas-a1", True)]
    nfs_down(store, "mx2")  # the incident begins: mx1's page is now the incident's
    assert alerts() == [("incident", "nfs-not-responding:nas-a1", True),
                        ("page", "mx1/nfs-not-responding/nas-a1", False)]
    for host in ("mx3", "mx4"):
        nfs_down(store, host)
    assert [a for a in alerts() if a[2]] == [("incident", "nfs-not-responding:nas-a1", True)]
    # a page about a problem that names no dependency is still the host's own alert
    nfs_down(store, "mx3", "fs-error", "sda1")
    assert ("page", "mx3/fs-error/sda1", True) in alerts()
