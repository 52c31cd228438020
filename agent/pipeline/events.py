"""The timeline events the decision pipeline emits (agent/pipeline/api.py `Event`):
JSON-ready fields, the same in the audit log, `simulate` and the daemon's log lines."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from agent.model import Finding, Outcome, Plan, Proposal, Verdict
from agent.pipeline.api import Decision, Event, EventKind


def finding_event(f: Finding, t: float) -> Event:
    kind: EventKind = "finding" if f.state == "firing" else "resolved"
    return Event(t, kind, MappingProxyType({
        "problem": f.problem, "subject": f.subject, "state": f.state,
        "trusted": f.trusted, "severity": f.severity, "rule": f.rule, "count": f.count,
        "first_seen": f.first_seen, "evidence": list(f.evidence),
    }))


def verdict_event(p: Proposal, v: Verdict, t: float) -> Event:
    return Event(t, "verdict", MappingProxyType({
        "action": p.action, "subject": p.subject, "problem": p.problem,
        "finding_subject": p.finding_subject, "rung": p.rung, "origin": p.origin,
        "guard": v.guard, "allow": v.allow, "reason": v.reason,
    }))


def plan_event(p: Proposal, plan: Plan, execute: bool, t: float) -> Event:
    return Event(t, "plan", MappingProxyType({
        "action": plan.action, "subject": plan.subject, "problem": p.problem,
        "finding_subject": p.finding_subject, "rung": p.rung, "origin": p.origin,
        "execute": execute, "summary": plan.summary, "reason": p.reason,
        "steps": [list(s.argv) for s in plan.steps],
        "verify": [list(s.argv) for s in plan.verify],
    }))


def outcome_event(d: Decision, o: Outcome, t: float) -> Event:
    return Event(t, "outcome", MappingProxyType({
        "action": o.action, "subject": o.subject, "problem": d.proposal.problem,
        "finding_subject": d.proposal.finding_subject, "origin": d.proposal.origin,
        "ok": o.ok, "executed": o.executed,
        "detail": o.detail,
        "results": [{"argv": list(r.argv), "exit_code": r.exit_code, "ran": r.ran,
                     "timed_out": r.timed_out} for r in o.results],
    }))


def note_event(text: str, t: float, **extra: Any) -> Event:
    return Event(t, "note", MappingProxyType({"text": text, **extra}))
