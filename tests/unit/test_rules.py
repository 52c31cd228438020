"""Detection rules: parsing (errors carry file, key, reason), shipped defaults, thresholds."""

from __future__ import annotations

import pytest

from agent.detect.findings import Detectors
from agent.detect.rules import AllOfRule, SignatureRule, ThresholdRule
from agent.model import Finding
from tests.unit._decide import T0, config, metrics, sample

FILE = "/etc/nodewarden/agent.toml"


@pytest.mark.parametrize("role", ["generic", "storage", "mail"])
def test_shipped_defaults_parse_cleanly(role: str) -> None:
    cfg, errors = config({"agent": {"role": role}})
    assert errors == []
    names = {r.name for r in cfg.rules}
    assert {"kernel", "load-high", "blocked-high"} <= names
    if role == "storage":
        hang = next(r for r in cfg.rules if r.name == "storage-hang")
        assert isinstance(hang, AllOfRule) and "kernel:hung-task" in hang.of
    if role == "mail":
        assert {"auth-flood", "imap-down", "listen-overflows"} <= names


@pytest.mark.parametrize(("rules", "key", "reason"), [
    ({"x": {"kind": "nope"}}, "rules.x.kind", "must be one of"),
    ({"x": {"kind": "threshold", "level": 1}}, "rules.x.metric", "is required"),
    ({"x": {"kind": "threshold", "metric": "load1", "op": "=>", "level": 1}},
     "rules.x.op", "must be one of"),
    ({"x": {"kind": "threshold", "metric": "load1", "level": 4, "clear": 6}},
     "rules.x.clear", "must not be above level 4"),
    ({"x": {"kind": "threshold", "metric": "load1", "level": 4, "subject": "{disk}"}},
     "rules.x.subject", "unknown placeholder {disk}"),
    ({"x": {"kind": "signature", "problems": ["hung-task"], "count": 0}},
     "rules.x.count", "must be at least 1"),
    ({"x": {"kind": "probe", "failures": 0}}, "rules.x.failures", "needs failures"),
    ({"x": {"kind": "device"}}, "rules.x.devices", "is required"),
    ({"x": {"kind": "all_of", "of": ["load-high", "ghost"]}}, "rules.x.of", "'ghost'"),
    ({"x": {"kind": "all_of", "of": ["load-high", "blocked-high"], "subject_from": "kernel"}},
     "rules.x.subject_from", "is not one of"),
    ({"x": {"kind": "threshold", "metric": "a.*.*.*.*", "level": 1}},
     "rules.x.metric", "at most 3 '*'"),
    ({"x": {"kind": "threshold", "metric": "a.*.*", "level": 1, "subject": "{match4}"}},
     "rules.x.subject", "unknown placeholder {match4}"),
    ({"x": {"kind": "threshold", "metric": "load1", "level": 1, "sustain": 5}},
     "rules.x.sustain", "unknown key"),
])
def test_bad_rule_is_refused_with_file_key_reason(
    rules: dict[str, object], key: str, reason: str
) -> None:
    _, errors = config({"rules": rules}, FILE)
    assert any(e.file == FILE and e.key == key and reason in e.reason for e in errors), errors


def test_user_rule_replaces_default_and_enabled_false_removes() -> None:
    cfg, errors = config({"rules": {
        "load-high": {"kind": "threshold", "metric": "load1_per_cpu", "level": 9.0},
        "disk-removed": {"kind": "device", "devices": ["sda"], "enabled": False},
    }})
    assert errors == []
    load = next(r for r in cfg.rules if r.name == "load-high")
    assert isinstance(load, ThresholdRule) and load.level == 9.0
    assert "disk-removed" not in {r.name for r in cfg.rules}


def test_removing_a_rule_an_all_of_needs_is_an_error() -> None:
    _, errors = config({"agent": {"role": "storage"},
                        "rules": {"blocked-high": {"kind": "threshold", "enabled": False}}})
    assert any(e.key == "rules.storage-hang.of" and "blocked-high" in e.reason for e in errors)


LOAD = ThresholdRule("load", "load1_per_cpu", ">", 4.0, for_s=60, clear=2.0, clear_for_s=30)


def run(rule: ThresholdRule, series: list[tuple[float, float]]) -> list[tuple[float, str]]:
    """Feed (offset, value) samples; return (offset, state) for each change."""
    det = Detectors([rule])
    out: list[tuple[float, str]] = []
    for dt, value in series:
        for f in det.on_metrics(metrics(T0 + dt, {rule.metric: value})):
            out.append((dt, f.state))
    return out


@pytest.mark.parametrize(("name", "series", "changes"), [
    ("spike does not fire", [(0, 9), (10, 1), (20, 1)], []),
    ("sustained fires after for_s", [(0, 5), (30, 5), (60, 5), (70, 5)], [(60, "firing")]),
    ("dip restarts the sustain", [(0, 5), (30, 1), (40, 5), (90, 5), (100, 5)],
     [(100, "firing")]),
    ("between clear and level stays firing (hysteresis)",
     [(0, 5), (60, 5), (70, 3), (80, 3.5), (200, 3)], [(60, "firing")]),
    ("clears only after clear_for_s below clear",
     [(0, 5), (60, 5), (70, 1), (90, 1), (100, 1)], [(60, "firing"), (100, "resolved")]),
    ("flapping around the level neither fires nor clears every sample",
     [(t, 5 if (t // 10) % 2 == 0 else 3) for t in range(0, 300, 10)], []),
    ("flapping after firing does not clear",
     [(0, 5), (60, 5)] + [(t, 5 if (t // 10) % 2 == 0 else 1.5) for t in range(70, 300, 10)],
     [(60, "firing")]),
])
def test_threshold_sustain_and_hysteresis(
    name: str, series: list[tuple[float, float]], changes: list[tuple[float, str]]
) -> None:
    assert run(LOAD, series) == changes, name


def test_threshold_less_than_and_missing_metric_is_ignored() -> None:
    rule = ThresholdRule("mem", "mem_available_pct", "<", 5.0, for_s=0, clear=10.0)
    det = Detectors([rule])
    assert [f.state for f in det.on_metrics(metrics(T0, {"mem_available_pct": 3}))] == ["firing"]
    assert det.on_metrics(metrics(T0 + 1, {"load1": 1})) == []
    assert det.on_metrics(metrics(T0 + 2, {"mem_available_pct": 8})) == []
    assert [f.state for f in det.on_metrics(metrics(T0 + 3, {"mem_available_pct": 11}))] == [
        "resolved"]


def test_glob_metric_gives_one_finding_per_disk() -> None:
    rule = ThresholdRule("await", "disk.*.await_ms", ">", 500.0, subject="{match}")
    det = Detectors([rule])
    got = det.on_metrics(metrics(T0, {"disk.sda.await_ms": 10, "disk.sdb.await_ms": 900,
                                      "disk.sdc.await_ms": 2000}))
    assert sorted(f.subject for f in got) == ["sdb", "sdc"]
    assert all(f.problem == "await" and f.evidence for f in got)


def test_several_wildcards_pick_each_part_the_first_matching_as_little_as_it_can() -> None:
    rule = ThresholdRule("src", "tcp_synrecv.*.*", ">=", 20.0, for_s=10,
                         subject="{match2} port {match1} ({match})")
    det = Detectors([rule])
    values: dict[str, float] = {
        "tcp_synrecv.443.203.0.113.5": 180, "tcp_synrecv.25.2001:db8::7": 40,
        "tcp_synrecv.443.198.51.100.7": 3, "tcp_listen_overflows_per_s": 900}
    assert det.on_metrics(metrics(T0, values)) == []  # not sustained yet
    got = det.on_metrics(metrics(T0 + 10, values))
    assert sorted(f.subject for f in got) == [
        "2001:db8::7 port 25 (25.2001:db8::7)", "203.0.113.5 port 443 (443.203.0.113.5)"]
    assert all(f.evidence[0].startswith("tcp_synrecv.") for f in got)


def test_mail_role_syn_flood_source_rule_subject_is_the_address() -> None:
    cfg, errors = config({"agent": {"role": "mail"}})
    assert errors == []
    det = Detectors(cfg.rules)
    values: dict[str, float] = {"tcp_synrecv.443.203.0.113.5": 25,
                                "tcp_synrecv.443.198.51.100.7": 19}
    det.on_metrics(metrics(T0, values))
    got = det.on_metrics(metrics(T0 + 10, values))
    assert [(f.problem, f.subject, f.state) for f in got] == [
        ("syn-flood-source", "203.0.113.5", "firing")]
    # drained below the clear level for a minute: resolved
    det.on_metrics(metrics(T0 + 20, {"tcp_synrecv.443.203.0.113.5": 4}))
    got = det.on_metrics(metrics(T0 + 80, {"tcp_synrecv.443.203.0.113.5": 0}))
    assert [(f.subject, f.state) for f in got] == [("203.0.113.5", "resolved")]


def test_blocked_task_subject_comes_from_the_sample() -> None:
    rule = ThresholdRule("blocked", "procs_blocked", ">=", 8, subject="{blocked_task}")
    det = Detectors([rule])
    [f] = det.on_metrics(sample(T0, ("nfsd", "jbd2/sda1-8"), procs_blocked=12))
    assert (f.problem, f.subject, f.trusted) == ("blocked", "nfsd", True)
    assert "procs_blocked=12" in f.evidence[0]


def test_active_lists_firing_findings_with_count_and_bounded_evidence() -> None:
    rule = ThresholdRule("load", "load1", ">", 1.0)
    det = Detectors([rule], evidence_limit=3)
    for i in range(10):
        det.on_metrics(metrics(T0 + i, {"load1": 2.0 + i}))
    [f] = det.active()
    assert isinstance(f, Finding)
    assert (f.count, f.first_seen, f.last_seen, len(f.evidence)) == (10, T0, T0 + 9, 3)
    assert "load1=11" in f.evidence[-1]


def test_signature_rule_defaults_problem_to_the_match() -> None:
    rule = SignatureRule("kernel", sources=("kmsg",))
    assert rule.problem is None
