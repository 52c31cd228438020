"""Filesystem use without a helper process (agent/sources/fsusage.py): statvfs in a daemon
thread per call, at most one call per mount in flight, a call that does not return makes
its mount hung and never blocks the caller.

A stand-in statvfs that blocks on an Event plays the hung mount here (the real one, a FUSE
mount that stops answering, is tests/integration/test_hung_mount_real.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.sources.fsusage import FsUsage, used_pct
from agent.sources.metrics import MetricsSampler
from agent.sources.settings import MetricsSettings

FIXTURES = Path(__file__).parent / "fixtures"
SYS = FIXTURES / "proc_sys"


class StandIn:
    """statvfs that answers 75 % used at once, except for "/hang" until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, path: str) -> os.statvfs_result:
        with self._lock:
            self.calls.append(path)
        if path == "/hang":
            self.release.wait()
        if path == "/gone":
            raise FileNotFoundError(2, "No such file or directory")
        # f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_flag f_namemax
        return os.statvfs_result((4096, 4096, 100, 25, 25, 0, 0, 0, 0, 255))


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.release.set()  # no thread of this test outlives it


def threads_named_statvfs() -> int:
    return sum(t.name == "statvfs" for t in threading.enumerate())


def test_a_hung_mount_is_reported_and_the_others_measured(stand_in: StandIn) -> None:
    fs = FsUsage(("/a", "/hang", "/b"), 0.2, statvfs=stand_in)
    readings = fs.measure()  # returns although /hang never answers
    assert readings["/a"].used_pct == 75.0
    assert readings["/b"].used_pct == 75.0
    hung = readings["/hang"]
    assert hung.used_pct is None
    assert hung.reason.startswith("hung: statvfs has not returned for ")
    assert "(timeout 0.2 s); measured again once it returns" in hung.reason
    assert set(fs.in_flight()) == {"/hang"}


def test_a_hung_mount_gets_no_second_call_until_the_first_returns(stand_in: StandIn) -> None:
    fs = FsUsage(("/a", "/hang"), 0.2, statvfs=stand_in)
    fs.measure()
    before = threads_named_statvfs()
    for _ in range(5):
        assert fs.measure()["/hang"].reason.startswith("hung: ")
    assert stand_in.calls.count("/hang") == 1  # one stuck thread, never a pile of them
    assert stand_in.calls.count("/a") == 6
    assert threads_named_statvfs() <= before
    stand_in.release.set()  # the server came back
    assert fs.wait(5.0)
    assert fs.measure()["/hang"].used_pct == 75.0
    assert stand_in.calls.count("/hang") == 2


def test_start_returns_at_once_and_hung_comes_with_the_clock(stand_in: StandIn) -> None:
    """The loop's way: start() never waits; readings() judge by the injected clock."""
    clock = FakeClock()
    fs = FsUsage(("/hang",), 2.0, statvfs=stand_in, monotonic=clock.monotonic)
    assert fs.start() == 1
    assert fs.readings()["/hang"].reason == "not measured yet"
    clock.advance(2.5)
    assert fs.readings()["/hang"].reason.startswith("hung: statvfs has not returned for 2.5 s")
    assert fs.start() == 0  # still in flight: nothing new started


def test_statvfs_errors_say_why(stand_in: StandIn) -> None:
    reading = FsUsage(("/gone",), 1.0, statvfs=stand_in).measure()["/gone"]
    assert reading.used_pct is None
    assert reading.reason == "statvfs failed: No such file or directory"


def test_closed_starts_nothing(stand_in: StandIn) -> None:
    fs = FsUsage(("/a",), 1.0, statvfs=stand_in)
    fs.close()
    assert fs.start() == 0
    assert stand_in.calls == []


def test_real_statvfs_measures_like_df(tmp_path: Path) -> None:
    fs = FsUsage((str(tmp_path), str(tmp_path / "missing")), 5.0)
    readings = fs.measure()
    st = os.statvfs(tmp_path)
    expected = used_pct(st.f_blocks, st.f_bfree, st.f_bavail)
    assert readings[str(tmp_path)].used_pct == pytest.approx(expected, abs=0.5)
    assert readings[str(tmp_path / "missing")].reason == (
        "statvfs failed: No such file or directory")


def test_df_arithmetic() -> None:
    assert used_pct(1000, 400, 300) == pytest.approx(600 / 9)
    assert used_pct(0, 0, 0) == 0.0


def test_sampler_reports_fs_from_the_last_calls_and_staleness(
    tmp_path: Path, stand_in: StandIn
) -> None:
    clock = FakeClock()
    settings = MetricsSettings(filesystems=("/a", "/hang"), fs_timeout_s=0.2)
    fs = FsUsage(settings.filesystems, 0.2, statvfs=stand_in, monotonic=clock.monotonic)
    with MetricsSampler(
        settings, clock, FIXTURES / "proc_t0", SYS, background=False, fs_usage=fs,
        fs_interval_s=10.0,
    ) as sampler:
        assert sampler.sample().reasons["fs./a.used_pct"] == "not measured yet"
        sampler.refresh_slow()
        sample = sampler.sample()
        assert sample.values["fs./a.used_pct"] == 75.0
        assert sample.reasons["fs./hang.used_pct"].startswith("hung: ")
        clock.advance(60.0)  # nothing measured since: the value goes stale
        reason = sampler.sample().reasons["fs./a.used_pct"]
        assert reason.startswith("stale: last measured 60 s ago")


def test_sampler_in_the_background_starts_calls_on_its_cadence(stand_in: StandIn) -> None:
    clock = FakeClock()
    settings = MetricsSettings(filesystems=("/a",), fs_timeout_s=1.0)
    fs = FsUsage(settings.filesystems, 1.0, statvfs=stand_in, monotonic=clock.monotonic)
    with MetricsSampler(settings, clock, FIXTURES / "proc_t0", SYS, fs_usage=fs,
                        fs_interval_s=10.0) as sampler:
        assert fs.wait(5.0)
        assert stand_in.calls == ["/a"]  # the priming call at construction
        for _ in range(9):
            clock.advance(1.0)
            sampler.sample()
        assert stand_in.calls == ["/a"]  # not due yet
        clock.advance(1.0)
        sampler.sample()
        assert fs.wait(5.0)
        assert stand_in.calls == ["/a", "/a"]
        assert sampler.sample().values["fs./a.used_pct"] == 75.0
