"""The detectors: signature windows, recovery, quiet, trust, probes, devices, all_of."""

from __future__ import annotations

import pytest

from agent.detect.findings import Detectors
from agent.detect.rules import (
    AllOfRule,
    DeviceRule,
    ProbeRule,
    Rule,
    SignatureRule,
    ThresholdRule,
)
from agent.model import DeviceEvent, Finding, ProbeResult
from tests.unit._decide import T0, match, metrics

FLOOD = SignatureRule("auth-flood", problems=("auth-failure",), sources=("log:*",), count=3,
                      window_s=60, quiet_s=300, problem="auth-flood")


def states(changes: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.problem, f.subject, f.state) for f in changes]


def test_signature_needs_n_matches_within_the_window_per_subject() -> None:
    det = Detectors([FLOOD])
    out = []
    for dt, addr in [(0, "a"), (10, "b"), (20, "a"), (30, "b"), (100, "a"), (110, "b"),
                     (115, "b")]:
        out += det.on_match(match("auth-failure", addr, T0 + dt, source="log:mail"))
    # "a" at 0, 20, 100 and "b" at 10, 30, 110, 115: never 3 of one subject within 60 s
    assert out == []
    out += det.on_match(match("auth-failure", "b", T0 + 116, source="log:mail"))
    assert states(out) == [("auth-flood", "b", "firing")]
    [f] = det.active()
    assert f.count == 3 and f.trusted and f.rule == "auth-flood"


def test_other_sources_and_problems_do_not_count() -> None:
    det = Detectors([FLOOD])
    for i in range(5):
        assert det.on_match(match("auth-failure", "a", T0 + i)) == []  # kmsg, not log:*
        assert det.on_match(match("mail-deferred", "a", T0 + i, source="log:mail")) == []
    assert det.active() == []


def test_recovery_resolves_only_its_subject() -> None:
    rule = SignatureRule("kernel", sources=("kmsg",))
    det = Detectors([rule])
    det.on_match(match("nfs-not-responding", "nas-a1", T0))
    det.on_match(match("nfs-not-responding", "nas-b2", T0))
    out = det.on_match(match("nfs-not-responding", "nas-a1", T0 + 30, recovery=True))
    assert states(out) == [("nfs-not-responding", "nas-a1", "resolved")]
    assert [f.subject for f in det.active()] == ["nas-b2"]


def test_recovery_before_firing_does_not_report() -> None:
    det = Detectors([FLOOD])
    det.on_match(match("auth-failure", "a", T0, source="log:mail"))
    assert det.on_match(match("auth-failure", "a", T0 + 1, source="log:mail",
                              recovery=True)) == []


def test_signature_only_finding_resolves_after_quiet() -> None:
    rule = SignatureRule("kernel", sources=("kmsg",), quiet_s=600)
    det = Detectors([rule])
    det.on_match(match("hung-task", "nfsd", T0))
    assert det.tick(T0 + 599) == []
    det.on_match(match("hung-task", "nfsd", T0 + 500))  # a new match restarts the quiet
    assert det.tick(T0 + 1000) == []
    assert states(det.tick(T0 + 1100)) == [("hung-task", "nfsd", "resolved")]
    assert det.active() == []


@pytest.mark.parametrize(("facilities", "trusted"), [
    ((0,), [True]),
    ((1,), [False]),          # written to /dev/kmsg from userspace
    ((None,), [False]),       # a kmsg line whose facility nobody knows is not the kernel's
    ((1, 1, 0), [True, False]),  # the kernel said it too: a trusted finding of its own
])
def test_trust_comes_only_from_kernel_lines(facilities: tuple[int | None, ...],
                                            trusted: list[bool]) -> None:
    det = Detectors([SignatureRule("kernel", sources=("kmsg",))])
    for i, fac in enumerate(facilities):
        det.on_match(match("hung-task", "nfsd", T0 + i, facility=fac))
    assert [f.trusted for f in det.active()] == trusted
    assert [f.trusted for f in det.actionable()] == [t for t in trusted if t]
    for f in det.active():
        assert ("untrusted" in f.evidence[-1]) is (not f.trusted)


def test_untrusted_finding_becomes_trusted_when_the_kernel_confirms_it() -> None:
    det = Detectors([SignatureRule("kernel", sources=("kmsg",))])
    [first] = det.on_match(match("hung-task", "nfsd", T0, facility=1))
    [second] = det.on_match(match("hung-task", "nfsd", T0 + 5, facility=0))
    assert (first.trusted, second.trusted, second.state) == (False, True, "firing")


def test_count_needs_trusted_matches_alone() -> None:
    rule = SignatureRule("hung", problems=("hung-task",), count=2, window_s=60)
    det = Detectors([rule])
    assert det.on_match(match("hung-task", "nfsd", T0, facility=1)) == []
    assert det.on_match(match("hung-task", "nfsd", T0 + 1, facility=0)) == []  # 1 of 2
    [f] = det.on_match(match("hung-task", "nfsd", T0 + 2, facility=0))
    assert f.trusted is True and f.count == 2 and f.first_seen == T0 + 1  # no forged part


def test_a_forged_line_first_changes_nothing_for_the_real_one() -> None:
    """The real line is answered as if the forged one had never been: its own first-seen
    time, count and subject."""
    det = Detectors([SignatureRule("kernel", sources=("kmsg",))])
    [forged] = det.on_match(match("hung-task", "nfsd", T0, facility=1))
    [real] = det.on_match(match("hung-task", "nfsd", T0 + 30, facility=0))
    assert (forged.trusted, real.trusted) == (False, True)
    assert (real.first_seen, real.count) == (T0 + 30, 1)
    assert [f.key for f in det.actionable()] == [("hung-task", "nfsd")]


PROBE = ProbeRule("imap-down", probes=("imap*",), failures=3, latency_ms=2000, for_s=60)


def probe(name: str, t: float, ok: bool, latency: float | None = 10.0) -> ProbeResult:
    return ProbeResult(t=t, name=name, ok=ok, latency_ms=latency, detail="timed out")


@pytest.mark.parametrize(("name", "series", "changes"), [
    ("two failures are not three", [(0, False, None), (30, False, None), (60, True, 10)], []),
    ("a success resets the run", [(0, False, None), (30, False, None), (60, True, 10),
                                  (90, False, None), (120, False, None)], []),
    ("three in a row fire, a success resolves",
     [(0, False, None), (30, False, None), (60, False, None), (90, False, None),
      (120, True, 15)], [(60, "firing"), (120, "resolved")]),
    ("slow for for_s fires", [(0, True, 3000), (30, True, 3000), (60, True, 2500),
                              (90, True, 100)], [(60, "firing"), (90, "resolved")]),
    ("briefly slow does not", [(0, True, 3000), (30, True, 100), (60, True, 3000)], []),
])
def test_probe_rules(name: str, series: list[tuple[float, bool, float | None]],
                     changes: list[tuple[float, str]]) -> None:
    det = Detectors([PROBE])
    out = []
    for dt, ok, latency in series:
        out += [(dt, f.state) for f in det.on_probe(probe("imap-tls", T0 + dt, ok, latency))]
    assert out == changes, name
    assert det.on_probe(probe("smtp", T0, False)) == []  # not an imap probe


def test_probe_finding_subject_is_the_probe() -> None:
    det = Detectors([PROBE])
    for i in range(3):
        changes = det.on_probe(probe("imap", T0 + i, False))
    assert states(changes) == [("imap-down", "imap", "firing")]


def test_device_removal_fires_and_return_resolves() -> None:
    det = Detectors([DeviceRule("disk-removed", devices=("sd?",))])
    assert det.on_device(DeviceEvent(T0, "remove", "loop0")) == []
    assert det.on_device(DeviceEvent(T0, "remove", "sdb1", devtype="partition")) == []
    assert states(det.on_device(DeviceEvent(T0, "remove", "sdb", model="ST4000"))) == [
        ("disk-removed", "sdb", "firing")]
    assert det.on_device(DeviceEvent(T0 + 1, "change", "sdb")) == []
    assert states(det.on_device(DeviceEvent(T0 + 60, "add", "sdb"))) == [
        ("disk-removed", "sdb", "resolved")]


HANG_RULES: list[Rule] = [
    ThresholdRule("load-high", "load1_per_cpu", ">", 4.0, for_s=0, clear=2.0),
    ThresholdRule("blocked-high", "procs_blocked", ">=", 8, for_s=0, clear=2,
                  subject="{blocked_task}"),
    SignatureRule("kernel", sources=("kmsg",), quiet_s=900),
    AllOfRule("storage-hang", of=("load-high", "blocked-high", "kernel:hung-task"),
              subject_from="kernel:hung-task", problem="storage-hang"),
]


def hang_states(changes: list[Finding]) -> list[tuple[str, str, str]]:
    return [s for s in states(changes) if s[0] == "storage-hang"]


def test_all_of_fires_only_when_every_part_fires_and_resolves_when_one_stops() -> None:
    det = Detectors(HANG_RULES)
    assert hang_states(det.on_metrics(metrics(T0, {"load1_per_cpu": 9, "procs_blocked": 1}))) \
        == []
    assert hang_states(det.on_match(match("hung-task", "nfsd", T0 + 1))) == []
    assert hang_states(det.on_match(match("soft-lockup", "3", T0 + 1))) == []
    fired = det.on_metrics(metrics(T0 + 2, {"load1_per_cpu": 9, "procs_blocked": 20}))
    assert hang_states(fired) == [("storage-hang", "nfsd", "firing")]
    hang = next(f for f in fired if f.problem == "storage-hang")
    assert hang.trusted and len(hang.evidence) == 3
    out = det.on_metrics(metrics(T0 + 3, {"load1_per_cpu": 1, "procs_blocked": 20}))
    assert hang_states(out) == [("storage-hang", "nfsd", "resolved")]


def test_all_of_with_a_spoofed_part_does_not_fire() -> None:
    det = Detectors(HANG_RULES)
    det.on_match(match("hung-task", "nfsd", T0, facility=1))
    fired = det.on_metrics(metrics(T0 + 1, {"load1_per_cpu": 9, "procs_blocked": 20}))
    assert [f for f in fired if f.problem == "storage-hang"] == []


def test_all_of_takes_its_subject_from_trusted_evidence_only() -> None:
    """A forged `task nfsd` line before a real hung jbd2 task must not make the storage
    hang an nfsd one (its ladder would restart the NFS server and ask for the node)."""
    det = Detectors(HANG_RULES)
    det.on_match(match("hung-task", "nfsd", T0, facility=1))
    det.on_match(match("hung-task", "jbd2/dm-0-8", T0 + 5, facility=0))
    fired = det.on_metrics(metrics(T0 + 6, {"load1_per_cpu": 9, "procs_blocked": 20}))
    [hang] = [f for f in fired if f.problem == "storage-hang"]
    assert (hang.subject, hang.trusted) == ("jbd2/dm-0-8", True)


def test_all_of_resolves_when_the_signature_part_goes_quiet() -> None:
    det = Detectors(HANG_RULES)
    det.on_match(match("hung-task", "nfsd", T0))
    det.on_metrics(metrics(T0, {"load1_per_cpu": 9, "procs_blocked": 20}))
    assert [f.problem for f in det.active()].count("storage-hang") == 1
    assert ("storage-hang", "nfsd", "resolved") in states(det.tick(T0 + 901))
