"""Write-ahead intent records: written *before* a node restart, read after the boot.

The agent cannot record the outcome of a reboot while it happens, so `node-restart` writes
an intent first (a plan step: `python3 -m agent.execute.intent write ...`, visible in the
dry-run). After boot the agent reads the pending intents: a different boot id means the
reboot happened on purpose; the same boot id means it did not. Files are written
atomically (temp file, fsync, rename, fsync of the directory) under STATE_DIR/intents/.

A restart that runs under a coordinator's lease records the lease too (`lease`, the
`coordinator` that granted it, `lease_expires_at`): the lease is held through the reboot
and given back once the intent is reconciled; `lease_outcome` then says what became of
it ("given back to ..." or why it was left to run out). Records written before leases
existed have none of these fields, and read as intents without a lease.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from agent.boot import read_boot_id
from agent.state.files import StateError, write_json_atomic

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Intent:
    id: str
    action: str
    subject: str
    reason: str
    written_at: float
    boot_id: str
    completed_at: float | None = None
    outcome: str | None = None  # "rebooted" | "not-rebooted" | free text
    ok: bool | None = None
    #: the coordinator's lease the action ran under (its id), who granted it, its end
    lease: str | None = None
    coordinator: str | None = None
    lease_expires_at: float | None = None
    #: what became of the lease after the intent was reconciled (None: not settled yet)
    lease_outcome: str | None = None

    @property
    def pending(self) -> bool:
        return self.completed_at is None

    @property
    def lease_unsettled(self) -> bool:
        """Reconciled, and its lease neither given back nor left to run out yet."""
        return not self.pending and self.lease is not None and self.lease_outcome is None


def intents_dir(state_dir: Path) -> Path:
    return state_dir / "intents"


def save(state_dir: Path, intent: Intent) -> Intent:
    intents_dir(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomic(intents_dir(state_dir) / f"{intent.id}.json", asdict(intent))
    return intent


def write_intent(
    state_dir: Path, action: str, subject: str, reason: str, *, now: float, boot_id: str,
    intent_id: str | None = None, lease: str | None = None, coordinator: str | None = None,
    lease_expires_at: float | None = None,
) -> Intent:
    """Record (durably, before acting) that `action` is about to happen, under `lease`
    from `coordinator` when it holds one."""
    iid = intent_id or f"{int(now)}-{os.urandom(4).hex()}"  # uuid would import platform
    return save(state_dir, Intent(iid, action, subject, reason, now, boot_id, lease=lease,
                                  coordinator=coordinator, lease_expires_at=lease_expires_at))


def read_intents(state_dir: Path) -> list[Intent]:
    """Every intent record, oldest first; an unreadable file is logged and skipped."""
    out = []
    directory = intents_dir(state_dir)
    if not directory.is_dir():
        return []
    for path in sorted(directory.glob("*.json")):
        try:
            out.append(Intent(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable intent record %s: %s", path, exc)
    return sorted(out, key=lambda i: (i.written_at, i.id))


def complete_intent(
    state_dir: Path, intent_id: str, outcome: str, ok: bool, now: float
) -> Intent:
    """Mark an intent done with what became of it (kept for the audit, not deleted)."""
    for intent in read_intents(state_dir):
        if intent.id == intent_id:
            return save(state_dir, replace(intent, completed_at=now, outcome=outcome, ok=ok))
    raise KeyError(f"no intent {intent_id!r} in {intents_dir(state_dir)}")


def settle_lease(state_dir: Path, intent_id: str, outcome: str) -> Intent:
    """Record what became of an intent's lease (given back, or left to run out)."""
    for intent in read_intents(state_dir):
        if intent.id == intent_id:
            return save(state_dir, replace(intent, lease_outcome=outcome))
    raise KeyError(f"no intent {intent_id!r} in {intents_dir(state_dir)}")


def reconcile(state_dir: Path, boot_id: str, now: float) -> list[Intent]:
    """After start-up: complete every pending intent; returns the ones completed now."""
    done = []
    for intent in read_intents(state_dir):
        if not intent.pending:
            continue
        if intent.boot_id != boot_id:
            done.append(complete_intent(state_dir, intent.id, "rebooted", True, now))
        else:
            done.append(complete_intent(
                state_dir, intent.id, "not-rebooted: the agent started in the same boot", False,
                now))
    return done


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m agent.execute.intent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="durably record an intent; prints its id")
    w.add_argument("--state-dir", required=True, type=Path)
    w.add_argument("--action", required=True)
    w.add_argument("--subject", required=True)
    w.add_argument("--reason", required=True)
    w.add_argument("--lease", help="the coordinator's lease the action runs under")
    w.add_argument("--coordinator", help="the coordinator that granted it (host:port)")
    w.add_argument("--lease-expires", type=_finite, help="its end (Unix seconds)")
    ls = sub.add_parser("list", help="print every intent record as JSON lines")
    ls.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "write":
        try:
            intent = write_intent(args.state_dir, args.action, args.subject, args.reason,
                                  now=time.time(), boot_id=read_boot_id(), lease=args.lease,
                                  coordinator=args.coordinator,
                                  lease_expires_at=args.lease_expires)
        except (OSError, StateError) as exc:
            print(f"cannot write intent: {exc}", file=sys.stderr)
            return 1
        print(intent.id)
        return 0
    for intent in read_intents(args.state_dir):
        print(json.dumps(asdict(intent), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
