"""`nodewarden status`: what the agent sees and what it would do, from the state directory.

Reads what the daemon leaves there (docs/operator.md): `cycle.json` (the last cycle's
sentence and the firing findings), `ladders.json` (ladder positions), `history.json`
(executions: cooldowns, budgets), `maintenance.json`, `approvals.json`, and the tail of
`audit.jsonl` (last actions). It never talks to the daemon and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from agent.cli import EXIT_OK, EXIT_PROBLEM, EXIT_RUNTIME, EXIT_USAGE
from agent.report.audit import AUDIT_FILE
from agent.report.status_file import CYCLE_FILE

HELP = (
    "Show the agent's state: the last cycle's summary, firing findings, ladder positions, "
    "cooldowns, budgets, maintenance, approvals and the last actions. Exit 0 when nothing "
    "is firing, 1 when findings are firing or the action history is broken, 2 for a bad "
    "configuration, 3 when the state directory cannot be read."
)

#: bytes read from the end of the audit log for "last actions"
TAIL_BYTES = 256 * 1024
LAST_ACTIONS = 10
#: findings and ladders listed in the text form (--json lists all)
SHOW = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--config", metavar="FILE", help="configuration file")


def audit_tail(path: Path, kinds: frozenset[str], limit: int) -> list[dict[str, Any]]:
    """The last `limit` records of `kinds` in the audit log (bad lines are skipped)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first one is probably cut
    out: list[dict[str, Any]] = []
    for raw in reversed(lines):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("kind") in kinds:
            out.append(record)
            if len(out) >= limit:
                break
    return list(reversed(out))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def collect(config: Any, now: float) -> dict[str, Any]:
    """Everything status shows, as JSON-ready data."""
    from agent.commands.maintenance import describe
    from agent.policy.engine import Policy
    from agent.state import SafetyState

    state_dir: Path = config.agent.state_dir
    out: dict[str, Any] = {
        "host": config.agent.hostname, "role": config.agent.role, "mode": config.agent.mode,
        "config": list(config.sources), "state_dir": str(state_dir), "now": now,
    }
    cycle = _read_json(state_dir / CYCLE_FILE)
    if cycle is None:
        out["sentence"] = "no cycle recorded: is `nodewarden run` running with this state_dir?"
        out["cycle_age_s"] = None
        out["findings"] = []
    else:
        age = now - float(cycle.get("t", now))
        out["sentence"] = str(cycle.get("sentence", ""))
        out["cycle_age_s"] = round(age, 1)
        out["findings"] = cycle.get("findings", [])
    if not state_dir.is_dir():
        out.update(ladders=[], cooldowns=[], budgets=[], approvals=[], history_fault=None,
                   faults=[],
                   maintenance=describe(None, now), last_actions=[], problems=[
                       f"state directory {state_dir} does not exist yet"])
        return out
    state = SafetyState(state_dir, now=now)
    out["problems"] = list(state.problems)
    policy = Policy(config.ladders, hostname=config.agent.hostname, state=state)
    out["ladders"] = [{
        "problem": p.problem, "subject": p.subject, "next_rung": p.next_rung + 1,
        "rungs": p.rungs, "last_action": p.last_action, "last_rung_at": p.last_rung_at,
        "due_at": p.due_at, "firing": p.firing, "summary": p.summary,
    } for p in policy.positions()]
    out.update(_guards_left(config, state, now))
    out["faults"] = state.faults()
    out["maintenance"] = describe(state.maintenance(now), now)
    out["approvals"] = [{"action": a.action, "subject": a.subject, "expires_at": a.expires_at,
                         "by": a.by, "reason": a.reason} for a in state.approvals(now)]
    fault = state.history_fault
    out["history_fault"] = None if fault is None else {"reason": fault.reason,
                                                       "since": fault.since}
    out["last_actions"] = _last_actions(state_dir)
    out["reporter"] = _reporter(config, state_dir)
    return out


def _reporter(config: Any, state_dir: Path) -> dict[str, Any] | None:
    """What the daemon last wrote of its reporter (reporter.json); None: no coordinator."""
    if config.coordinator is None:
        return None
    seen = _read_json(state_dir / "reporter.json") or {}
    return {"coordinator": f"{config.coordinator.host}:{config.coordinator.port}",
            **{k: seen.get(k) for k in ("connected", "spool_depth", "last_ack", "last_error",
                                        "dropped", "t")}}


def _guards_left(config: Any, state: Any, now: float) -> dict[str, Any]:
    """Cooldowns running and budgets used, as the guards themselves count them."""
    from agent.guards.base import iso, span
    from agent.guards.stateful import BudgetGuard, CooldownGuard

    guards = config.guards
    return {"cooldowns": [{
        "action": c.action, "subject": c.subject, "target": c.target, "ran_at": c.ran_at,
        "until": c.until, "text": f"{c.action} {c.target}: ran {span(now - c.ran_at)} ago, "
                                  f"next at {iso(c.until)}",
    } for c in CooldownGuard(state, guards.cooldown_s, guards.cooldowns).left(now)],
        "budgets": [{
            "action": b.action, "per": b.budget.per, "problem": b.problem, "used": b.used,
            "limit": b.budget.max, "window_s": b.budget.window_s,
            "next_allowed": b.next_allowed, "exhausted": b.exhausted,
        } for b in BudgetGuard(state, guards.budgets).left(now)]}


def _last_actions(state_dir: Path) -> list[dict[str, Any]]:
    """The last actions: the outcomes in the audit log, the agent's and (executed) the
    operators' (`nodewarden remediate --execute` writes the same log)."""
    records = [r for r in audit_tail(state_dir / AUDIT_FILE, frozenset({"outcome"}),
                                     4 * LAST_ACTIONS)
               if r.get("origin", "policy") != "operator" or r.get("executed")]
    actions = [{"t": r.get("t"), "action": r.get("action"), "subject": r.get("subject"),
                "ok": r.get("ok"), "executed": r.get("executed"), "detail": r.get("detail"),
                "origin": r.get("origin", "policy"), "by": r.get("by")}
               for r in records]
    actions.sort(key=lambda a: float(a["t"] or 0))
    return actions[-LAST_ACTIONS:]


def render(s: dict[str, Any]) -> str:
    """The status for a terminal (control characters in others' text shown as \\xNN)."""
    return _render(_printable(s))


def _printable(value: Any) -> Any:
    """Every string in the status, its control characters shown as \\xNN (a subject
    holds a process or user name: a terminal escape there would rewrite the screen)."""
    from agent.report.text import printable

    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _render(s: dict[str, Any]) -> str:
    from agent.guards.base import iso, span

    lines = [f"{s['host']} ({s['role']}, mode {s['mode']}; state {s['state_dir']})"]
    age = s.get("cycle_age_s")
    lines.append(s["sentence"] + ("" if age is None else f"   [{span(age)} ago]"))
    lines.append(s["maintenance"]["text"])
    if s.get("history_fault"):
        lines.append(f"HISTORY FAULT: {s['history_fault']['reason']} — every action but a "
                     "page is denied (nodewarden maintenance clear-history)")
    for fault in s.get("faults", []):
        if fault.startswith("maintenance:"):
            lines.append(f"MAINTENANCE FAULT: {fault} — automatic actions wait (nodewarden "
                         "maintenance on|off)")
    for p in s.get("problems", []):
        lines.append(f"warning: {p}")
    lines.append(f"findings firing: {len(s['findings'])}")
    for f in s["findings"][:SHOW]:
        trust = "" if f.get("trusted", True) else "  (untrusted: reported, never acted on)"
        lines.append(f"  {f['problem']} {f['subject']} ({f.get('severity')}) since "
                     f"{iso(float(f.get('first_seen', 0)))}{trust}")
    if len(s["findings"]) > SHOW:
        lines.append(f"  ... and {len(s['findings']) - SHOW} more (--json lists them all)")
    lines.append(f"ladders: {len(s['ladders'])}")
    for ladder in s["ladders"][:SHOW]:
        lines.append(f"  {ladder['problem']} {ladder['subject']}: rung {ladder['next_rung']} "
                     f"of {ladder['rungs']}: {ladder['summary']}")
    lines.append(f"cooldowns: {len(s['cooldowns'])}")
    lines += [f"  {c['text']}" for c in s["cooldowns"]]
    lines.append("budgets (used/limit per window; pages are never budgeted):")
    for b in s["budgets"]:
        extra = f", next allowed {iso(b['next_allowed'])}" if b["exhausted"] else ""
        where = "per host" if b["per"] == "host" else (
            f"for {b['problem']}" if b["problem"] is not None else "per problem")
        lines.append(f"  {b['action']} {where}: {b['used']}/{b['limit']} per "
                     f"{span(b['window_s'])}" + extra)
    lines.append(f"approvals: {len(s['approvals'])}")
    lines += [f"  {a['action']} {a['subject']} until {iso(a['expires_at'])} by {a['by']}"
              for a in s["approvals"]]
    lines.append(_reporter_line(s.get("reporter"), float(s["now"])))
    lines.append(f"last actions: {len(s['last_actions'])}")
    for a in s["last_actions"]:
        ok = {True: "ok", False: "FAILED", None: "-"}[a["ok"]]
        ran = "executed" if a["executed"] else "dry-run"
        lines.append(f"  {iso(float(a['t'] or 0))} {a['action']} {a['subject']}: {ok}, {ran}"
                     f" ({a['origin']}): {a['detail']}")
    return "\n".join(lines)


def _reporter_line(r: dict[str, Any] | None, now: float) -> str:
    from agent.guards.base import span

    if r is None:
        return "reporter: no coordinator configured (the agent runs alone)"
    if r.get("t") is None:
        return f"reporter: to {r['coordinator']}, no state written yet (is the daemon running?)"
    state = "connected" if r.get("connected") else "NOT connected"
    ack = "never" if r.get("last_ack") is None else f"{span(now - float(r['last_ack']))} ago"
    line = (f"reporter: {state} to {r['coordinator']}, {r.get('spool_depth')} message(s) "
            f"waiting, last ack {ack}")
    if r.get("dropped"):
        line += f", dropped {r['dropped']}"
    if r.get("last_error"):
        line += f"; last error: {_printable(r['last_error'])}"
    return line


def main(args: argparse.Namespace) -> int:
    from agent.clock import SystemClock
    from agent.commands._operator import load

    config = load("status", args.config)
    if config is None:
        return EXIT_USAGE
    try:
        s = collect(config, SystemClock().now())
    except OSError as exc:
        print(f"nodewarden status: cannot read {config.agent.state_dir}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(json.dumps(s, ensure_ascii=False, default=str) if args.json else render(s))
    return EXIT_PROBLEM if s["findings"] or s.get("faults") else EXIT_OK
