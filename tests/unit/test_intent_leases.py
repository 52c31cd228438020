"""A node restart's lease across the reboot (docs/coordinator.md "Leases across a reboot"):
the Decider plans the restart with the lease it runs under, so the write-ahead intent
carries it; after the boot, once the intent is reconciled, the lease goes back through
the Decider to the coordinator that granted it, once; an agent that now runs alone or
reports elsewhere says so and leaves it to run out. Intent records from before leases
still read and reconcile."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.config import Config, parse_config
from agent.daemon.reporting import Reporting
from agent.daemon.startup import reconcile_intents as reconcile_at_start
from agent.detect.catalog import load_catalog
from agent.detect.matcher import Matcher
from agent.execute import intent
from agent.guards import build_chain
from agent.guards.settings import GuardSettings
from agent.model import Lease, Proposal
from agent.pipeline.build import build_pipeline
from agent.pipeline.consider import Decider
from agent.pipeline.contexts import action_contexts
from agent.pipeline.decide import DecisionPipeline
from agent.pipeline.intents import give_back_leases, reconcile_intents
from agent.state import SafetyState

T0 = 1_790_000_000.0
WHERE = "10.231.7.1:2222"


@dataclass
class Coordinator:
    """Grants every lease (stamped with where it came from); records every call."""

    clock: FakeClock
    where: str = WHERE
    calls: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        return f"coordinator at {self.where}"

    def can_grant(self) -> bool:
        return True

    def acquire(self, action: str, subject: str, ttl_s: float) -> Lease | None:
        self.calls.append(("acquire", f"{action} {subject}"))
        return Lease("17", action, subject, self.clock.now() + ttl_s, self.where)

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        self.calls.append(("renew", lease.id))
        return None

    def release(self, lease: Lease) -> None:
        self.calls.append(("release", lease.id))


@functools.cache
def matcher() -> Matcher:
    catalog, errors = load_catalog(None)
    assert errors == []
    return Matcher(catalog)


def pipeline(tmp_path: Path, coordinator: Coordinator) -> DecisionPipeline:
    config, errors = parse_config({"agent": {
        "hostname": "nas1", "state_dir": str(tmp_path), "mode": "enforce",
        "signatures_dir": str(tmp_path / "none")}}, "test.toml")
    assert errors == []
    return build_pipeline(config, coordinator.clock, lease_client=coordinator,
                          check_preconditions=False, matcher=matcher(), write_status=False)


def restart_intent(state: Path, boot_id: str = "boot-1", coordinator: str = WHERE) -> str:
    return intent.write_intent(state, "node-restart", "nas1", "hung nfsd", now=T0,
                               boot_id=boot_id, lease="17", coordinator=coordinator,
                               lease_expires_at=T0 + 900).id


def test_an_intent_record_from_before_leases_still_reads_and_reconciles(
    tmp_path: Path,
) -> None:
    (tmp_path / "intents").mkdir()
    (tmp_path / "intents" / "old.json").write_text(json.dumps({
        "id": "old", "action": "node-restart", "subject": "nas1", "reason": "hung nfsd",
        "written_at": T0, "boot_id": "boot-1", "completed_at": None, "outcome": None,
        "ok": None}))
    [old] = intent.read_intents(tmp_path)
    assert old.pending and old.lease is None and not old.lease_unsettled
    coordinator = Coordinator(FakeClock(T0 + 60))
    events = reconcile_intents(tmp_path, coordinator.clock, boot_id="boot-2")
    assert [(e.kind, e.fields["intent"], e.fields["ok"]) for e in events] == [
        ("outcome", "old", True)]
    assert give_back_leases(tmp_path, pipeline(tmp_path, coordinator), WHERE,
                            coordinator.clock) == []
    assert coordinator.calls == []
    [done] = intent.read_intents(tmp_path)
    assert done.outcome == "rebooted" and done.lease is None and done.lease_outcome is None


def test_a_node_restart_under_a_lease_writes_the_lease_into_its_intent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    coordinator = Coordinator(FakeClock(T0))
    state = SafetyState(tmp_path, now=T0)
    decider = Decider(build_chain(GuardSettings(), mode="enforce", state=state,
                                  lease_client=coordinator),
                      state, action_contexts(Config(), coordinator.clock, read_host=False))
    considered = decider.consider(Proposal(
        action="node-restart", subject="nas1", problem="storage-hang", disruptive=True,
        needs_lease=True, finding_subject="nfsd"), T0)
    assert considered.decision is not None and considered.decision.execute
    write_step = considered.decision.plan.steps[0]
    assert write_step.description == "write-ahead intent record"
    args = list(write_step.argv[write_step.argv.index("agent.execute.intent") + 1:])
    assert args[-3:] == ["--lease=17", f"--coordinator={WHERE}",
                         f"--lease-expires={T0 + 900:.3f}"]
    # the step's own helper, as the executor runs it
    args = [a if not a.startswith("--state-dir=") else f"--state-dir={tmp_path}"
            for a in args]
    monkeypatch.setattr(intent, "read_boot_id", lambda: "boot-1")
    assert intent.main(args) == 0
    [record] = intent.read_intents(tmp_path)
    assert record.id == capsys.readouterr().out.strip()
    assert (record.lease, record.coordinator, record.lease_expires_at) == (
        "17", WHERE, T0 + 900)
    assert record.pending and not record.lease_unsettled


def test_dry_run_plans_the_restart_without_a_lease(tmp_path: Path) -> None:
    coordinator = Coordinator(FakeClock(T0))
    state = SafetyState(tmp_path, now=T0)
    decider = Decider(build_chain(GuardSettings(), mode="dry-run", state=state,
                                  lease_client=coordinator),
                      state, action_contexts(Config(), coordinator.clock, read_host=False))
    considered = decider.consider(Proposal(
        action="node-restart", subject="nas1", problem="storage-hang", disruptive=True,
        needs_lease=True, finding_subject="nfsd"), T0)
    assert considered.decision is not None and not considered.decision.execute
    assert not any(a.startswith("--lease") for a in considered.decision.plan.steps[0].argv)
    assert coordinator.calls == []


def test_after_the_boot_the_lease_goes_back_to_its_coordinator_once(tmp_path: Path) -> None:
    iid = restart_intent(tmp_path)
    coordinator = Coordinator(FakeClock(T0 + 120))
    p = pipeline(tmp_path, coordinator)
    reconcile_intents(tmp_path, coordinator.clock, boot_id="boot-2")
    [note] = give_back_leases(tmp_path, p, WHERE, coordinator.clock)
    assert coordinator.calls == [("release", "17")]
    assert note.kind == "note" and note.t == T0 + 120
    assert (note.fields["lease"], note.fields["intent"], note.fields["released"]) == (
        "17", iid, True)
    assert f"given back to the coordinator at {WHERE}" in note.fields["text"]
    assert f"intent {iid}: rebooted" in note.fields["text"]
    [record] = intent.read_intents(tmp_path)
    assert record.lease_outcome == f"given back to {WHERE}"
    # settled: the next start gives nothing back again
    assert give_back_leases(tmp_path, p, WHERE, coordinator.clock) == []
    assert coordinator.calls == [("release", "17")]


def test_a_restart_that_did_not_happen_gives_its_lease_back_too(tmp_path: Path) -> None:
    restart_intent(tmp_path, boot_id="boot-1")
    coordinator = Coordinator(FakeClock(T0 + 5))
    [outcome] = reconcile_intents(tmp_path, coordinator.clock, boot_id="boot-1")
    assert outcome.fields["ok"] is False
    give_back_leases(tmp_path, pipeline(tmp_path, coordinator), WHERE, coordinator.clock)
    assert coordinator.calls == [("release", "17")]


@pytest.mark.parametrize(("now_reports_to", "said"), [
    (None, "this agent now runs without a coordinator"),
    ("10.9.9.9:22", "this agent now reports to 10.9.9.9:22"),
])
def test_a_lease_from_a_coordinator_the_agent_no_longer_reports_to_is_left_to_run_out(
    tmp_path: Path, now_reports_to: str | None, said: str,
) -> None:
    iid = restart_intent(tmp_path)
    coordinator = Coordinator(FakeClock(T0 + 120), where=now_reports_to or "")
    reconcile_intents(tmp_path, coordinator.clock, boot_id="boot-2")
    [note] = give_back_leases(tmp_path, pipeline(tmp_path, coordinator), now_reports_to,
                              coordinator.clock)
    assert coordinator.calls == []
    assert (note.kind, note.fields["lease"], note.fields["intent"],
            note.fields["released"]) == ("note", "17", iid, False)
    assert note.fields["text"].endswith(said)
    assert f"from the coordinator at {WHERE} is left to run out by its TTL" in (
        note.fields["text"])
    [record] = intent.read_intents(tmp_path)
    assert record.lease_outcome == f"left to run out by its TTL: {said}"


def test_the_daemons_start_reconciles_then_says_what_became_of_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """agent/daemon/startup.py, as `run` calls it: here without [coordinator]."""
    iid = restart_intent(tmp_path)
    coordinator = Coordinator(FakeClock(T0 + 120), where="")
    p = pipeline(tmp_path, coordinator)
    monkeypatch.setattr("agent.pipeline.intents.read_boot_id", lambda: "boot-2")
    reporting = Reporting(p.config, tmp_path, coordinator.clock)
    events, failed = reconcile_at_start(tmp_path, coordinator.clock, p, reporting)
    assert not failed
    assert [(e.kind, e.fields["intent"]) for e in events] == [("outcome", iid),
                                                              ("note", iid)]
    assert "without a coordinator" in events[1].fields["text"]


def test_a_lease_that_cannot_be_settled_fails_the_start_step_without_losing_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    restart_intent(tmp_path)
    coordinator = Coordinator(FakeClock(T0 + 120))
    p = pipeline(tmp_path, coordinator)
    monkeypatch.setattr("agent.pipeline.intents.read_boot_id", lambda: "boot-2")

    def full_disk(*_args: object) -> intent.Intent:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(intent, "settle_lease", full_disk)
    events, failed = reconcile_at_start(tmp_path, coordinator.clock, p,
                                        Reporting(p.config, tmp_path, coordinator.clock))
    assert failed
    assert [e.kind for e in events] == ["outcome", "note"]
    assert "not reconciled: OSError" in events[-1].fields["text"]
