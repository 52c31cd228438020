"""Node-restart intents after a boot, as timeline events (agent/execute/intent.py writes
and reconciles the records; remediations/node_restart.py plans the writing).

The daemon reads them before anything else at start-up: a new boot id means the restart
happened on purpose (an "outcome" event, ok), the same boot id means it did not.

Then the lease each one ran under (docs/coordinator.md "Leases across a reboot"): it is
given back through the pipeline, whose Decider is the one place leases are released,
when the coordinator this agent reports to now is the one that granted it. The release
goes through the reporter's durable spool, so a coordinator out of reach gets it when it
is back. An agent that now runs without a coordinator, or reports to another one, says
so and leaves the lease to run out by its TTL. Either way the intent record keeps what
became of its lease (`lease_outcome`), so it is done once; a crash in between gives it
back again at the next start, which the coordinator answers the same way.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from agent.boot import read_boot_id
from agent.clock import Clock
from agent.execute import intent as intents
from agent.guards.base import iso
from agent.model import Lease
from agent.pipeline.api import Event, Pipeline


def reconcile_intents(
    state_dir: Path, clock: Clock, boot_id: str | None = None
) -> list[Event]:
    """Complete pending node-restart intents, as "outcome" events."""
    done = intents.reconcile(state_dir, boot_id or read_boot_id(), clock.now())
    return [Event(clock.now(), "outcome", {
        "action": i.action, "subject": i.subject, "ok": bool(i.ok), "executed": True,
        "detail": f"intent {i.id} ({i.reason}): {i.outcome}", "intent": i.id,
    }) for i in done]


def give_back_leases(
    state_dir: Path, pipeline: Pipeline, coordinator: str | None, clock: Clock
) -> list[Event]:
    """The leases of reconciled intents not settled yet: given back through `pipeline`
    to `coordinator` ("host:port", None: the agent runs alone) when it granted them,
    else left to run out; "note" events that say which (see the module docstring)."""
    events: list[Event] = []
    for intent in intents.read_intents(state_dir):
        if not intent.lease_unsettled or intent.lease is None:
            continue
        lease = Lease(intent.lease, intent.action, intent.subject,
                      intent.lease_expires_at or 0.0, intent.coordinator or "")
        if coordinator is not None and coordinator == intent.coordinator:
            given = pipeline.give_back(lease, f"intent {intent.id}: {intent.outcome}")
            events += [Event(e.t, e.kind, MappingProxyType({**e.fields, "intent": intent.id}))
                       for e in given]
            settled = f"given back to {coordinator}"
        else:
            why = ("this agent now runs without a coordinator" if coordinator is None
                   else f"this agent now reports to {coordinator}")
            settled = f"left to run out by its TTL: {why}"
            until = (f"until {iso(intent.lease_expires_at)}" if intent.lease_expires_at
                     else "its end unknown")
            events.append(Event(clock.now(), "note", MappingProxyType({
                "text": f"lease {lease.id} for {lease.action} {lease.subject} from the "
                        f"coordinator at {lease.granted_by or '(unknown)'} is left to run "
                        f"out by its TTL ({until}): {why}",
                "lease": lease.id, "intent": intent.id, "released": False})))
        intents.settle_lease(state_dir, intent.id, settled)
    return events
