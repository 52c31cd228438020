"""Node-restart intents after a boot, as timeline events (agent/execute/intent.py writes
and reconciles the records; remediations/node_restart.py plans the writing).

The daemon reads them before anything else at start-up: a new boot id means the restart
happened on purpose (an "outcome" event, ok), the same boot id means it did not.
"""

from __future__ import annotations

from pathlib import Path

from agent.boot import read_boot_id
from agent.clock import Clock
from agent.execute import intent as intents
from agent.pipeline.api import Event


def reconcile_intents(
    state_dir: Path, clock: Clock, boot_id: str | None = None
) -> list[Event]:
    """Complete pending node-restart intents, as "outcome" events."""
    done = intents.reconcile(state_dir, boot_id or read_boot_id(), clock.now())
    return [Event(clock.now(), "outcome", {
        "action": i.action, "subject": i.subject, "ok": bool(i.ok), "executed": True,
        "detail": f"intent {i.id} ({i.reason}): {i.outcome}", "intent": i.id,
    }) for i in done]
