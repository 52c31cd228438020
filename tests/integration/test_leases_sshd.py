"""Leases through the agent's one consider path: the lease gate (agent/guards/costly.py)
asks the real coordinator behind a real sshd through the reporter
(agent/daemon/leases.py). A group's limit holds across agents, a release frees the
slot, no answer in time is a no within the timeout, and a grant that came too late is
given back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest

from agent.daemon.leases import CoordinatorLeases
from agent.guards.costly import LeaseGuard
from agent.model import Proposal
from agent.report.reporter import Reporter
from agent.report.settings import ReporterSettings
from agent.report.spool import Spool
from coordinator.store import SqliteStore
from tests.integration._coordinator import Coordinator, make_coordinator
from tests.integration._sshd import Sshd, running_sshd
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Coordinator, Sshd, Path]]:
    coordinator = make_coordinator(tmp_path / "c", ["nas1", "nas2"], group="storage",
                                   max_disruptive=1)
    with running_sshd(coordinator.authorized_keys) as server:
        known = tmp_path / "known_hosts"
        known.write_bytes(server.known_hosts.read_bytes())
        yield coordinator, server, known


def leases_for(host: str, fleet: tuple[Coordinator, Sshd, Path], tmp_path: Path,
               made: list[Reporter], timeout_s: float = 10.0) -> CoordinatorLeases:
    coordinator, server, known = fleet
    settings = ReporterSettings(host="127.0.0.1", port=server.port, user="root",
                                key_file=coordinator.keys[host], known_hosts=known,
                                backoff_max_s=0.5, lease_timeout_s=timeout_s)
    reporter = Reporter(settings, Spool(tmp_path / f"spool-{host}"), {"version": "t"})
    made.append(reporter)
    reporter.start()
    assert poll(lambda: reporter.connected or None, 30)
    return CoordinatorLeases(reporter, f"127.0.0.1:{server.port}", timeout_s, time.time)


@pytest.fixture
def made() -> Iterator[list[Reporter]]:
    reporters: list[Reporter] = []
    yield reporters
    for r in reporters:
        r.stop()


def restart(subject: str) -> Proposal:
    return Proposal("node-restart", subject, "storage-hang", disruptive=True)


def test_the_lease_gate_gets_a_lease_and_the_group_limit_holds(
        fleet: tuple[Coordinator, Sshd, Path], tmp_path: Path, made: list[Reporter]) -> None:
    one = LeaseGuard(leases_for("nas1", fleet, tmp_path, made), 600)
    two = LeaseGuard(leases_for("nas2", fleet, tmp_path, made), 600)
    verdict, lease = one.acquire(restart("nas1"), time.time())
    assert verdict.allow and lease is not None and "lease 1" in verdict.reason
    assert lease.expires_at <= time.time() + 600
    verdict, none = two.acquire(restart("nas2"), time.time())
    assert not verdict.allow and none is None
    assert "limit of 1" in verdict.reason and "held by nas1" in verdict.reason
    one.release(lease)  # sent through the spool: it reaches the store shortly
    store = SqliteStore(fleet[0].store)
    assert poll(lambda: store.run(lambda tx: tx.lease(1)).released or None, 30)  # type: ignore[union-attr]
    verdict, second = two.acquire(restart("nas2"), time.time())
    assert verdict.allow and second is not None
    renewed = two.renew(second, time.time())
    assert renewed is not None and renewed.id == second.id


def test_no_answer_in_time_is_a_no(fleet: tuple[Coordinator, Sshd, Path], tmp_path: Path,
                                   made: list[Reporter]) -> None:
    client = leases_for("nas1", fleet, tmp_path, made, timeout_s=1.0)
    frozen = [p for p in psutil.process_iter(["cmdline"])
              if "session --host nas1" in " ".join(p.info["cmdline"] or [])]
    assert frozen
    for p in frozen:  # the coordinator hangs: the connection stays up, no answer comes
        p.suspend()
    try:
        started = time.monotonic()
        assert client.acquire("node-restart", "nas1", 600) is None
        assert time.monotonic() - started < 5.0  # bounded by the timeout
        assert "no answer within 1 s" in client.describe()
    finally:
        for p in frozen:
            p.resume()


def test_a_grant_that_comes_too_late_is_given_back(
        fleet: tuple[Coordinator, Sshd, Path], tmp_path: Path, made: list[Reporter]) -> None:
    coordinator = fleet[0]
    client = leases_for("nas1", fleet, tmp_path, made, timeout_s=0.0001)
    assert client.acquire("node-restart", "nas1", 600) is None  # it gave up at once

    def released() -> bool | None:
        leases = SqliteStore(coordinator.store).run(lambda tx: tx.leases("storage"))
        return (bool(leases) and all(x.released is not None for x in leases)) or None

    assert poll(released, 30)
    assert asdict(made[0].status().spool)["depth"] == 0
