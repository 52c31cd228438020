"""The metrics sampler fed captured /proc trees: two snapshots 2 s apart (FakeClock), so
every rate and percentage has an exact expected value. The trees in fixtures/proc_t0,
proc_t1 and proc_oldkernel are real files of a 6.x kernel (netstat, meminfo layout) with
the counters the tests check set to round numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.sources import procfs
from agent.sources.metrics import METRICS, PSI_NAMES, MetricsSampler
from agent.sources.metricsdoc import render
from agent.sources.settings import MetricsSettings

FIXTURES = Path(__file__).parent / "fixtures"
SYS = FIXTURES / "proc_sys"
REPO = Path(__file__).parents[2]

NO_SLOW = MetricsSettings(filesystems=(), mailq_command=())


class ProcSwitch:
    """A proc root that is a symlink, re-pointed to the next captured snapshot."""

    def __init__(self, tmp: Path, first: str) -> None:
        self.link = tmp / "proc"
        self.link.symlink_to(FIXTURES / first)

    def to(self, name: str) -> None:
        self.link.unlink()
        self.link.symlink_to(FIXTURES / name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def two_samples(
    tmp_path: Path, clock: FakeClock, settings: MetricsSettings = NO_SLOW,
    sys_root: Path = SYS,
) -> MetricsSampler:
    proc = ProcSwitch(tmp_path, "proc_t0")
    sampler = MetricsSampler(
        settings, clock, proc.link, sys_root, background=False, dstate_interval_s=0
    )
    proc.to("proc_t1")
    clock.advance(2.0)
    return sampler


# --------------------------------------------------------------------------- exact values
EXPECTED_T1 = {
    "load1": 6.0, "load5": 3.5, "load15": 1.25, "load1_per_cpu": 1.5,
    # cpu deltas over 400 ticks: user+nice 100, system+irq+softirq 50, idle 200,
    # iowait 40, steal 10
    "cpu_user_pct": 25.0, "cpu_system_pct": 12.5, "cpu_idle_pct": 50.0,
    "cpu_iowait_pct": 10.0, "cpu_steal_pct": 2.5,
    "procs_running": 3.0, "procs_blocked": 2.0, "procs_dstate": 3.0,
    # TcpExt deltas over 2 s: +200, +210, +40, +40, +4
    "tcp_listen_overflows_per_s": 100.0, "tcp_listen_drops_per_s": 105.0,
    "tcp_syncookies_sent_per_s": 20.0, "tcp_reqq_full_do_cookies_per_s": 20.0,
    "tcp_reqq_full_drop_per_s": 2.0,
    "psi_io_some_avg10": 12.5, "psi_io_some_avg60": 8.25,
    "psi_io_full_avg10": 6.0, "psi_io_full_avg60": 4.0,
    "psi_cpu_some_avg10": 30.0, "psi_cpu_some_avg60": 20.0,
    "psi_memory_some_avg10": 0.75, "psi_memory_some_avg60": 0.25,
    "psi_memory_full_avg10": 0.5, "psi_memory_full_avg60": 0.1,
    "mem_available_pct": 25.0, "swap_used_pct": 25.0,
    # vda: 200 I/Os (100 r, 50 w, 50 flush) taking 1000 ms, busy 1000 ms of 2000 ms
    "disk.vda.iops": 100.0, "disk.vda.await_ms": 5.0, "disk.vda.util_pct": 50.0,
    # sda: idle; dm-0: idle
    "disk.sda.iops": 0.0, "disk.sda.await_ms": 0.0, "disk.sda.util_pct": 0.0,
    "disk.dm-0.iops": 0.0, "disk.dm-0.await_ms": 0.0, "disk.dm-0.util_pct": 0.0,
    # SYN pressure (cookies sent): net/tcp's half-open entries per port and address, at
    # least 2 each (192.0.2.9 has 1); net/tcp6 is empty
    "tcp_synrecv.443.203.0.113.5": 3.0, "tcp_synrecv.443.198.51.100.7": 2.0,
    "tcp_synrecv.25.203.0.113.5": 2.0,
}


def test_two_snapshots_give_exact_rates_and_percentages(
    tmp_path: Path, clock: FakeClock
) -> None:
    sample = two_samples(tmp_path, clock).sample()
    assert dict(sample.values) == pytest.approx(EXPECTED_T1)
    assert sample.t == clock.now()


def test_cpu_full_absent_on_old_kernel_is_unavailable_not_error(
    tmp_path: Path, clock: FakeClock
) -> None:
    sample = two_samples(tmp_path, clock).sample()
    assert sample.unavailable == {
        "psi_cpu_full_avg10", "psi_cpu_full_avg60", "mailq_size",
    }
    assert "no such line" in sample.reasons["psi_cpu_full_avg10"]


def test_d_state_tasks_named_once_and_parenthesised_names_not_fooled(
    tmp_path: Path, clock: FakeClock
) -> None:
    sample = two_samples(tmp_path, clock).sample()
    # 812 and 813 are nfsd in D, 901 jbd2 in D; 900 is called "evil) D (x" and sleeps (S)
    assert sample.blocked_tasks == ("jbd2/dm-0-8", "nfsd")
    assert sample.values["procs_dstate"] == 3.0


def test_dstate_scan_runs_on_its_own_cadence(tmp_path: Path, clock: FakeClock) -> None:
    proc = ProcSwitch(tmp_path, "proc_t0")
    sampler = MetricsSampler(
        NO_SLOW, clock, proc.link, SYS, background=False, dstate_interval_s=5.0
    )
    proc.to("proc_t1")
    clock.advance(1.0)
    assert sampler.sample().blocked_tasks == ()  # t0's scan, 1 s old: not rescanned
    clock.advance(4.0)
    assert sampler.sample().blocked_tasks == ("jbd2/dm-0-8", "nfsd")


def quiet_copy(tmp: Path, name: str) -> Path:
    """A copy of a captured /proc whose host looks quiet: no I/O waiters, load1 0.10."""
    import shutil

    dest = tmp / f"{name}-quiet"
    shutil.copytree(FIXTURES / name, dest, symlinks=True)
    stat = dest / "stat"
    stat.write_text("".join(
        "procs_blocked 0\n" if line.startswith("procs_blocked") else line
        for line in stat.read_text().splitlines(keepends=True)))
    (dest / "loadavg").write_text("0.10 0.10 0.10 1/250 4200\n")
    return dest


def test_dstate_scan_slows_down_while_the_host_is_quiet(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Each scan reads every /proc/PID/stat: on a quiet host every 30 s, not every 5 s."""
    link = tmp_path / "proc"
    link.symlink_to(quiet_copy(tmp_path, "proc_t0"))
    sampler = MetricsSampler(
        NO_SLOW, clock, link, SYS, background=False, dstate_interval_s=5.0
    )
    link.unlink()
    link.symlink_to(quiet_copy(tmp_path, "proc_t1"))  # D-state tasks, yet a quiet host
    clock.advance(6.0)
    assert sampler.sample().blocked_tasks == ()  # quiet: not rescanned after 6 s
    clock.advance(24.0)
    assert sampler.sample().blocked_tasks == ("jbd2/dm-0-8", "nfsd")  # 30 s: rescanned
    link.unlink()
    link.symlink_to(tmp_path / "proc_t0-quiet")  # the last scan found some: every 5 s
    clock.advance(5.0)
    assert sampler.sample().values["procs_dstate"] == 0.0


def test_partitions_loop_and_ram_devices_skipped(tmp_path: Path, clock: FakeClock) -> None:
    names = {n.split(".")[1] for n in two_samples(tmp_path, clock).sample().values
             if n.startswith("disk.")}
    assert names == {"vda", "sda", "dm-0"}


def test_without_sysfs_partitions_are_recognised_by_name(
    tmp_path: Path, clock: FakeClock
) -> None:
    sample = two_samples(tmp_path, clock, sys_root=tmp_path / "no-sys").sample()
    names = {n.split(".")[1] for n in sample.values if n.startswith("disk.")}
    assert names == {"vda", "sda", "dm-0"}


def test_configured_disks_are_exactly_those(tmp_path: Path, clock: FakeClock) -> None:
    settings = MetricsSettings(filesystems=(), disks=("sda1", "loop0", "nvme9n9"))
    sample = two_samples(tmp_path, clock, settings).sample()
    disk = {n: v for n, v in sample.values.items() if n.startswith("disk.")}
    # sda1: +90 reads taking 90 ms, busy 50 ms; loop0: +4950 reads, 990 ms, busy 1980 ms
    assert disk == pytest.approx({
        "disk.sda1.iops": 45.0, "disk.sda1.await_ms": 1.0, "disk.sda1.util_pct": 2.5,
        "disk.loop0.iops": 2475.0, "disk.loop0.await_ms": 0.2, "disk.loop0.util_pct": 99.0,
    })


def test_counters_going_backwards_give_no_rates(tmp_path: Path, clock: FakeClock) -> None:
    proc = ProcSwitch(tmp_path, "proc_t1")
    sampler = MetricsSampler(NO_SLOW, clock, proc.link, SYS, background=False)
    proc.to("proc_t0")
    clock.advance(1.0)
    values = sampler.sample().values
    assert not [n for n in values if n.startswith(("tcp_", "disk.vda", "disk.loop0"))]
    assert values["disk.sda.iops"] == 0.0  # sda's counters did not move: a rate of 0
    assert values["load1"] == 4.0  # gauges are still there


def test_no_time_passed_gives_no_rates_but_gauges(tmp_path: Path, clock: FakeClock) -> None:
    sampler = MetricsSampler(NO_SLOW, clock, FIXTURES / "proc_t0", SYS, background=False)
    values = sampler.sample().values
    assert "tcp_listen_overflows_per_s" not in values
    assert "disk.vda.iops" not in values
    assert values["mem_available_pct"] == pytest.approx(37.5)


def test_old_kernel_missing_psi_memavailable_netstat_are_unavailable(clock: FakeClock) -> None:
    sampler = MetricsSampler(
        NO_SLOW, clock, FIXTURES / "proc_oldkernel", FIXTURES / "absent", background=False
    )
    clock.advance(1.0)
    sample = sampler.sample()
    assert set(PSI_NAMES) <= sample.unavailable
    assert sample.reasons["psi_io_some_avg10"] == "no pressure stall information (PSI)"
    assert "mem_available_pct" in sample.unavailable
    assert "tcp_listen_overflows_per_s" in sample.unavailable
    assert sample.values["swap_used_pct"] == 0.0  # no swap at all
    assert sample.values["load1_per_cpu"] == 0.25  # 2 CPUs
    assert sample.values["disk.sda.iops"] == 0.0  # 14-column diskstats parsed
    assert "disk.sda1.iops" not in sample.values


# --------------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"812 (nfsd) D 2 0 0", ("nfsd", "D")),
        (b"900 (evil) D (x) S 1 1", ("evil) D (x", "S")),
        (b"7 (kworker/u8:2+fl) I 2", ("kworker/u8:2+fl", "I")),
        (b"5 () R 1", ("", "R")),
    ],
)
def test_task_name_and_state(data: bytes, expected: tuple[str, str]) -> None:
    assert procfs.task_name_and_state(data) == expected


def test_tcpext_rejects_unpaired_lines() -> None:
    with pytest.raises(ValueError, match="pair"):
        procfs.parse_tcpext("TcpExt: A B\nTcpExt: 1\n")


def test_stat_without_steal_column_still_parses() -> None:
    info = procfs.parse_stat("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\nprocs_running 1\n"
                             "procs_blocked 0\n")
    assert (info.cpu.steal, info.cpu.total, info.ncpu) == (0, 28, 1)


def test_meminfo_key_must_start_a_line() -> None:
    assert procfs.parse_meminfo("XMemTotal: 5 kB\nMemTotal:  7 kB\n", ("MemTotal",)) == {
        "MemTotal": 7
    }


def test_real_proc_parses() -> None:
    """The live kernel's files, as a check that the captured fixtures are not a fiction."""
    clock = FakeClock()
    sampler = MetricsSampler(NO_SLOW, clock, background=False)
    clock.advance(1.0)
    sample = sampler.sample()
    for name in ("load1", "procs_running", "mem_available_pct", "tcp_listen_drops_per_s"):
        assert name in sample.values, sample.reasons


# --------------------------------------------------------------------------- declarations
REQUIRED = (
    "load1", "load5", "load15", "load1_per_cpu", "cpu_iowait_pct", "cpu_steal_pct",
    "procs_blocked", "procs_running", "tcp_listen_overflows_per_s",
    "tcp_syncookies_sent_per_s", "mem_available_pct", "swap_used_pct", "disk.<dev>.await_ms",
    "disk.<dev>.util_pct", "disk.<dev>.iops", "fs.<mountpoint>.used_pct", "mailq_size",
    "probe.<name>.ok", "probe.<name>.latency_ms",
    *(f"psi_{r}_{k}_avg{w}" for r in ("io", "cpu", "memory") for k in ("some", "full")
      for w in (10, 60)),
)


def test_every_required_name_is_declared_with_unit_and_description() -> None:
    declared = {s.name: s for s in METRICS}
    assert set(REQUIRED) <= set(declared)
    assert len(declared) == len(METRICS)  # no duplicates
    for spec in METRICS:
        assert spec.unit and spec.source and spec.description, spec.name


def test_every_value_the_sampler_produces_is_declared(tmp_path: Path, clock: FakeClock) -> None:
    declared = {s.name for s in METRICS}
    for name in two_samples(tmp_path, clock).sample().values:
        family = name
        if name.startswith("disk."):
            family = "disk.<dev>." + name.rsplit(".", 1)[1]
        elif name.startswith("tcp_synrecv."):
            family = "tcp_synrecv.<port>.<address>"
        assert family in declared, name


def test_docs_metrics_md_matches_declarations() -> None:
    assert (REPO / "docs" / "metrics.md").read_text() == render(), (
        "regenerate: python -m agent.sources.metricsdoc > docs/metrics.md"
    )


def test_kept_open_proc_files_are_read_afresh(tmp_path: Path) -> None:
    """The real /proc is regenerated by each read at offset 0: a kept fd is never stale."""
    files = procfs.ProcFiles(keep_open=True)

    def rchar() -> int:
        text = files.read("/proc/self/io")
        return int(text.split("rchar:")[1].split()[0])

    first = rchar()
    assert rchar() > first  # the first read itself was counted: fresh content
    big = tmp_path / "big"
    big.write_bytes(b"x" * 200_000)  # longer than one 64 KiB pread
    assert len(files.read(str(big))) == 200_000
    files.close()
    assert rchar() > 0
    files.close()


def test_captured_trees_are_reopened_each_time(tmp_path: Path) -> None:
    files = procfs.ProcFiles(keep_open=False)
    path = tmp_path / "loadavg"
    path.write_text("1.00 1.00 1.00 1/1 1\n")
    assert files.read(str(path)).startswith("1.00")
    path.unlink()
    path.write_text("2.00 2.00 2.00 1/1 1\n")  # replaced, as ProcSwitch does
    assert files.read(str(path)).startswith("2.00")
