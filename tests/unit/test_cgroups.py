"""Per-unit CPU (agent/sources/cgroups.py) fed captured cgroup trees, 5 s apart.

fixtures/cgroup_v2_t{0,1,2} are a pure cgroup v2 tree (sys/fs/cgroup) plus the /proc
entries of the processes in provision.service, with round counters: between t0 and t1
provision.service used 4.75 s of CPU (95 % of a core), dovecot.service 1 s (20 %), and so
on; every expected value below follows from the fixture's numbers. cgroup_hybrid_* has
systemd's tree on the `unified` mount (a hybrid host, like the CI machine's containers);
cgroup_v1_* has it only in the co-mounted `cpu,cpuacct` v1 hierarchy (nanoseconds).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.sources.cgroups import (
    Layout,
    TopProcess,
    UnitCpu,
    find_layout,
    list_units,
    read_command,
    read_proc_ticks,
)
from agent.sources.metrics import MetricsSampler
from agent.sources.settings import MetricsSettings

FIXTURES = Path(__file__).parent / "fixtures"
NO_SLOW = MetricsSettings(filesystems=(), mailq_command=())
CMD_812 = "/bin/sh /opt/provision/run.sh --all"


def sync_tree(src: Path, dst: Path) -> None:
    """Make `dst` look like `src`, keeping the directories both have (and so their inodes:
    the scanner tells a recreated cgroup from the same one by its inode)."""
    dst.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in src.iterdir()}
    for old in dst.iterdir():
        if old.name not in names:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir():
            sync_tree(item, target)
        else:
            target.write_bytes(item.read_bytes())


class Snapshots:
    """A live copy of one captured snapshot, moved on to the next with `to()`."""

    def __init__(self, tmp: Path, first: str) -> None:
        self.root = tmp / "host"
        sync_tree(FIXTURES / first, self.root)

    def to(self, name: str) -> None:
        sync_tree(FIXTURES / name, self.root)

    @property
    def cgroup(self) -> str:
        return str(self.root / "sys/fs/cgroup")

    @property
    def proc(self) -> str:
        return str(self.root / "proc")


def scanner(snap: Snapshots, **kw: float) -> UnitCpu:
    return UnitCpu(snap.cgroup, snap.proc, clock_ticks=100, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- layout
@pytest.mark.parametrize(("fixture", "sub", "kind"), [
    ("cgroup_v2_t0", "", "v2"),
    ("cgroup_hybrid_t0", "/unified", "v2"),
    ("cgroup_v1_t0", "/cpu,cpuacct", "v1"),
])
def test_layout_is_found_v2_then_hybrid_then_v1(fixture: str, sub: str, kind: str) -> None:
    root = str(FIXTURES / fixture / "sys/fs/cgroup")
    assert find_layout(root) == Layout(root + sub, kind)  # type: ignore[arg-type]


def test_no_systemd_tree_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "unified/payload/init.scope").mkdir(parents=True)  # this CI host: no systemd
    reading = UnitCpu(str(tmp_path), str(tmp_path)).scan(0.0)
    assert reading.values == {} and reading.layout is None
    assert reading.error.startswith(f"no systemd cgroup tree under {tmp_path}")


def test_a_missing_tree_is_looked_for_again_only_after_a_minute(tmp_path: Path) -> None:
    units = UnitCpu(str(tmp_path), str(tmp_path))
    assert units.scan(0.0).error
    sync_tree(FIXTURES / "cgroup_v2_t0/sys/fs/cgroup", tmp_path)
    assert units.scan(59.0).error  # not looked for again yet
    found = units.scan(60.0)
    assert found.error == "" and found.layout == Layout(str(tmp_path), "v2")


def test_units_are_services_and_scopes_in_slices_only() -> None:
    base = str(FIXTURES / "cgroup_v2_t0/sys/fs/cgroup")
    assert sorted(name for name, _, _ in list_units(base)) == [
        "cron.service", "dovecot.service", "getty@tty1.service", "machine-web.scope",
        "old.service", "provision.service", "session-4.scope", "user@1000.service",
    ]  # not init.scope, dev-hugepages.mount, slices, nor user@1000's own foo.service


# --------------------------------------------------------------------------- values
def test_first_scan_primes_then_exact_percentages_above_the_floor(tmp_path: Path) -> None:
    snap = Snapshots(tmp_path, "cgroup_v2_t0")
    units = scanner(snap)
    first = units.scan(100.0)
    assert first.values == {} and first.error == ""
    snap.to("cgroup_v2_t1")
    reading = units.scan(105.0)
    assert dict(reading.values) == pytest.approx({
        "provision.service": 95.0,  # 4.75 s of CPU in 5 s
        "dovecot.service": 20.0,
        "new.service": 10.0,  # new since t0: all its 0.5 s is recent
        "session-4.scope": 2.0,
        "user@1000.service": 1.2,  # includes its app.slice/foo.service
        "machine-web.scope": 1.0,  # exactly the floor
    })  # cron.service at 0.5 % and getty at 0 are below the 1 % floor
    assert reading.top == {"provision.service": TopProcess(812, CMD_812, None)}
    assert reading.top["provision.service"].describe() == (
        f"top process pid 812 ({CMD_812}), most CPU time since it started")


def test_top_process_by_delta_and_units_linger_until_they_come_down(tmp_path: Path) -> None:
    snap = Snapshots(tmp_path, "cgroup_v2_t0")
    units = scanner(snap)
    units.scan(0.0)
    snap.to("cgroup_v2_t1")
    units.scan(5.0)
    snap.to("cgroup_v2_t2")
    reading = units.scan(10.0)
    assert dict(reading.values) == pytest.approx({
        "provision.service": 94.0,
        "dovecot.service": 0.2,  # below the floor now, still reported: it was before
        "new.service": 0.0,  # its cgroup is gone: it uses nothing
        "session-4.scope": 2.0,
        "user@1000.service": 1.2,
        "machine-web.scope": 1.0,
    })
    # pid 812 has the most CPU time overall, but 813 used 4.6 s of the last 5 s
    top = reading.top["provision.service"]
    assert (top.pid, top.command) == (813, "curl -s http://prov.example/api")
    assert top.cpu_pct == pytest.approx(92.0)
    assert top.describe() == "top process pid 813 (curl -s http://prov.example/api), 92% of a core"


def test_linger_expires_and_top_n_keeps_the_busiest(tmp_path: Path) -> None:
    snap = Snapshots(tmp_path, "cgroup_v2_t0")
    units = scanner(snap, top_n=2, linger_s=4.0)
    units.scan(0.0)
    snap.to("cgroup_v2_t1")
    assert dict(units.scan(5.0).values) == pytest.approx(
        {"provision.service": 95.0, "dovecot.service": 20.0})
    snap.to("cgroup_v2_t2")
    assert dict(units.scan(10.0).values) == pytest.approx(
        {"provision.service": 94.0, "session-4.scope": 2.0})  # dovecot expired after 4 s


def test_a_restarted_unit_counts_from_its_new_cgroup(tmp_path: Path) -> None:
    snap = Snapshots(tmp_path, "cgroup_v2_t0")
    units = scanner(snap, floor_pct=0.0)
    units.scan(0.0)
    unit = snap.root / "sys/fs/cgroup/system.slice/cron.service"
    unit.rename(unit.with_name("gone"))  # stopped and started again: a new cgroup, a
    unit.mkdir()  # new inode (the old one is kept until then, so it is not reused)...
    shutil.rmtree(unit.with_name("gone"))
    (unit / "cpu.stat").write_text("usage_usec 2500000\n")  # ...above the old total
    assert units.scan(5.0).values["cron.service"] == pytest.approx(50.0)  # not 10 %


@pytest.mark.parametrize(("fixture", "pct"), [("cgroup_hybrid", 180.0), ("cgroup_v1", 50.0)])
def test_hybrid_unified_and_v1_cpuacct_trees(tmp_path: Path, fixture: str, pct: float) -> None:
    snap = Snapshots(tmp_path, f"{fixture}_t0")
    units = scanner(snap)
    units.scan(0.0)
    snap.to(f"{fixture}_t1")
    reading = units.scan(5.0)
    assert dict(reading.values) == pytest.approx({"spamd.service": pct})
    assert reading.top == {}  # no process in cgroup.procs: nothing to name


def test_top_process_only_for_units_at_the_level(tmp_path: Path) -> None:
    snap = Snapshots(tmp_path, "cgroup_v2_t0")
    units = scanner(snap, top_process_pct=96.0)
    units.scan(0.0)
    snap.to("cgroup_v2_t1")
    assert units.scan(5.0).top == {}


def test_proc_readers(tmp_path: Path) -> None:
    proc = str(FIXTURES / "cgroup_v2_t1/proc")
    assert read_proc_ticks(proc, 812) == (1670, "sh")
    assert read_proc_ticks(proc, 999) is None
    assert read_command(proc, 813, "curl") == "curl -s http://prov.example/api"
    (tmp_path / "7").mkdir()
    (tmp_path / "7/cmdline").write_bytes(b"")  # a kernel thread
    assert read_command(str(tmp_path), 7, "kworker/0:1") == "kworker/0:1"
    (tmp_path / "8").mkdir()
    (tmp_path / "8/cmdline").write_bytes(b"x\x1b[2J\0" + b"a" * 600)
    command = read_command(str(tmp_path), 8, "x")
    assert command.startswith("x?[2J a") and len(command) == 120 and command.endswith("…")


# --------------------------------------------------------------------------- sampler
def test_sampler_scans_units_every_5_s_and_carries_the_values(tmp_path: Path) -> None:
    snap = Snapshots(tmp_path, "cgroup_v2_t0")
    clock = FakeClock()
    sampler = MetricsSampler(NO_SLOW, clock, FIXTURES / "proc_t0", background=False,
                             unit_cpu=scanner(snap))
    snap.to("cgroup_v2_t1")
    clock.advance(2.0)
    early = sampler.sample()
    assert not [n for n in early.values if n.startswith("unit.")]  # not due yet
    clock.advance(3.0)
    due = sampler.sample()
    assert due.values["unit.provision.service.cpu_pct"] == pytest.approx(95.0)
    assert due.values["unit.session-4.scope.cpu_pct"] == pytest.approx(2.0)
    assert due.details == {"unit.provision.service.cpu_pct":
                           f"top process pid 812 ({CMD_812}), most CPU time since it started"}
    snap.to("cgroup_v2_t2")
    clock.advance(1.0)
    between = sampler.sample()  # the last scan's values, until the next one
    assert between.values["unit.provision.service.cpu_pct"] == pytest.approx(95.0)
    assert between.details == due.details


def test_sampler_marks_units_unavailable_without_systemd(tmp_path: Path) -> None:
    sampler = MetricsSampler(NO_SLOW, FakeClock(), FIXTURES / "proc_t0", tmp_path,
                             background=False)
    sample = sampler.sample()
    assert "unit.<unit>.cpu_pct" in sample.unavailable
    assert sample.reasons["unit.<unit>.cpu_pct"].startswith("no systemd cgroup tree under")
    assert sample.details == {}
