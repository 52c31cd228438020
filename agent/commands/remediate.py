"""`nodewarden remediate ACTION`: the operator's own remediation, considered the way the
daemon considers its own (agent/pipeline/consider.py: the same guard chain, write-ahead
record, Executor and lease handling) and written to the same audit log (docs/operator.md).

Dry-run (the default) hands the plan to the RecordingRunner; `--execute` hands the *same*
Plan value to the SubprocessRunner. Operator requests (origin "operator") pass the mode,
trust, maintenance, cooldown, flapping and approval guards: the person at the shell made
that decision. They do not pass the budget (a reboot loop by hand is still a reboot
loop), the action's preconditions or the lease (no coordinator, no disruptive action).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from agent.cli import EXIT_OK, EXIT_PROBLEM, EXIT_RUNTIME, EXIT_USAGE
from agent.config import Config
from agent.execute import Executor, RecordingRunner
from agent.guards.base import ExecutingGuard
from agent.model import Outcome, Plan, Proposal, Step, Verdict
from agent.pipeline.api import Event
from agent.pipeline.consider import Considered
from remediations import Remediation

HELP = (
    "Plan a remediation (dry-run, the default) or run it (--execute) through the same "
    "guard chain as the daemon: prints the plan (every argv) and every guard's verdict; "
    "--execute runs exactly the printed plan and prints the outcome. Exit 0 allowed (and "
    "succeeded), 1 denied or failed, 2 unknown action or bad parameters."
)

#: actions whose subject defaults to this host's name
HOST_SUBJECT = frozenset({"node-restart", "page"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", metavar="ACTION",
                        help="a remediation: restart-service, node-restart, page, ... "
                             "(docs/remediations/)")
    parser.add_argument("--subject", metavar="S",
                        help="what to act on (a unit, addresses, a process...); "
                             "node-restart and page default to this host")
    parser.add_argument("--param", metavar="K=V", action="append", default=[],
                        help="an action parameter; repeatable")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--dry-run", action="store_true",
                     help="print the plan and the verdicts, run nothing (the default)")
    how.add_argument("--execute", action="store_true",
                     help="run the plan if every guard allows")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--config", metavar="FILE", help="configuration file")


def _params(pairs: list[str]) -> dict[str, str]:
    from agent.commands._operator import UsageError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {pair!r} must be KEY=VALUE")
        out[key] = value
    return out


class _DryRunMode:
    """The chain's mode guard, but nothing executes: the lease is only checked, not taken."""

    def __init__(self, inner: ExecutingGuard) -> None:
        self.inner = inner
        self.name = inner.name

    def check(self, proposal: Proposal, now: float) -> Verdict:
        return self.inner.check(proposal, now)

    def executes(self, proposal: Proposal) -> bool:
        return False


def plan_json(plan: Plan) -> dict[str, Any]:
    def steps(items: tuple[Step, ...]) -> list[dict[str, Any]]:
        return [{"argv": list(s.argv), "timeout_s": s.timeout_s, "description": s.description}
                for s in items]
    return {"action": plan.action, "subject": plan.subject, "summary": plan.summary,
            "disruptive": plan.disruptive, "steps": steps(plan.steps),
            "verify": steps(plan.verify), "rendered": plan.render()}


def main(args: argparse.Namespace) -> int:
    from agent.commands._operator import UsageError

    try:
        return _main(args)
    except UsageError as exc:
        print(f"nodewarden remediate: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _main(args: argparse.Namespace) -> int:
    import remediations
    from agent.clock import SystemClock
    from agent.commands._operator import UsageError, load, open_state
    from agent.execute import SubprocessRunner
    from agent.execute.runner import SAFE_ENV
    from agent.guards import GuardChain, NoCoordinator
    from agent.pipeline.consider import Decider
    from agent.pipeline.contexts import action_contexts, guard_chain

    config = load("remediate", args.config)
    if config is None:
        return EXIT_USAGE
    module, params, subject = _request(args, config.agent.hostname)
    clock = SystemClock()
    now = clock.now()
    # Steps run with a clean environment, except PATH: the operator's own (docs/operator.md).
    env = {**SAFE_ENV, "PATH": os.environ.get("PATH", SAFE_ENV["PATH"])}
    runner = SubprocessRunner(clock, env=env)
    contexts = action_contexts(config, clock, runner)
    try:  # bad parameters are a usage error, before any guard is asked
        remediations.build_plan(args.action, subject, params, contexts.for_action(args.action))
    except remediations.InvalidParams as exc:
        raise UsageError(f"{args.action} {subject}: " + "; ".join(exc.reasons)) from None
    state = open_state("remediate", config.agent.state_dir, now)
    if state is None:
        return EXIT_RUNTIME
    chain = guard_chain(config, state, contexts, lease_client=NoCoordinator(),
                        check_preconditions=True)
    if not args.execute:
        chain = GuardChain(_DryRunMode(chain.mode), chain.guards, costly=chain.costly,
                           lease=chain.lease)
    decider = Decider(chain, state, contexts)
    who = _who()
    proposal = Proposal(
        action=args.action, subject=subject, problem="operator",
        params=MappingProxyType(dict(params)), disruptive=bool(module.DISRUPTIVE),
        needs_lease=bool(module.NEEDS_LEASE), origin="operator", finding_subject=subject,
        reason=f"operator request by {who}",
    )
    considered = decider.consider(proposal, now)
    events = list(considered.events)
    outcome = None
    if considered.decision is not None:
        decision = considered.decision
        outcome = Executor(runner if decision.execute else RecordingRunner(), clock).run(
            decision.plan)
        events += decider.finish(decision, outcome, clock.now())
    _audit(config, events, who)
    report = _report(args, subject, params, considered, outcome)
    code = EXIT_OK if considered.decision is not None else EXIT_PROBLEM
    if outcome is not None and outcome.executed and not outcome.ok:
        code = EXIT_PROBLEM
    return _print(report, args.json, code)


def _request(args: argparse.Namespace, hostname: str) -> tuple[Remediation, Mapping[str, str],
                                                                str]:
    """The action, its resolved parameters and the subject asked for (UsageError)."""
    import remediations
    from agent.commands._operator import UsageError

    if args.action not in remediations.names():
        raise UsageError(f"unknown action {args.action!r}; known: "
                         + ", ".join(remediations.names()))
    module = remediations.load(args.action)
    params, errors = module.resolve(_params(args.param))
    if errors:
        raise UsageError(f"{args.action}: " + "; ".join(errors)
                         + f" (parameters: {', '.join(module.PARAMS) or 'none'})")
    subject = args.subject
    if subject is None:
        if args.action not in HOST_SUBJECT:
            raise UsageError(f"{args.action} needs --subject ({module.SUMMARY})")
        subject = hostname
    return module, params, subject


def _report(args: argparse.Namespace, subject: str, params: Mapping[str, str],
            considered: Considered, outcome: Outcome | None) -> dict[str, Any]:
    plan = considered.plan
    report: dict[str, Any] = {
        "action": args.action, "subject": subject, "params": dict(params),
        "mode": "execute" if args.execute else "dry-run",
        "plan": None if plan is None else plan_json(plan),
        "verdicts": [{"guard": v.guard, "allow": v.allow, "reason": v.reason}
                     for v in considered.verdicts],
        "allowed": considered.decision is not None, "outcome": None,
    }
    if outcome is not None:
        report["outcome"] = {
            "ok": outcome.ok, "executed": outcome.executed, "detail": outcome.detail,
            "results": [{"argv": list(r.argv), "exit_code": r.exit_code,
                         "timed_out": r.timed_out, "stderr": r.stderr[-2000:]}
                        for r in outcome.results],
        }
    return report


def _audit(config: Config, events: list[Event], who: str) -> None:
    """The operator's request in the audit log the daemon writes, like its own actions
    (`origin: operator` and who asked)."""
    from agent.report.audit import AUDIT_FILE, AuditLog

    audit = AuditLog(config.agent.state_dir / AUDIT_FILE)
    for event in events:
        audit.append({**event.to_json(), "host": config.agent.hostname, "by": who})
    audit.close()


def _who() -> str:
    from agent.commands._operator import operator_name

    return operator_name()


def _print(report: Mapping[str, Any], as_json: bool, code: int) -> int:
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
        return code
    print(report["plan"]["rendered"] if report["plan"] else "no plan: the remediation refuses")
    print("verdicts:")
    for v in report["verdicts"]:
        print(f"  {'allow' if v['allow'] else 'DENY '} {v['reason']}")
    outcome = report["outcome"]
    if outcome is not None:
        print(f"outcome: {'ok' if outcome['ok'] else 'FAILED'}: {outcome['detail']}")
    elif report["allowed"]:
        print("dry-run: allowed; nothing was run (add --execute to run exactly this plan)"
              if report["mode"] == "dry-run" else "")
    else:
        denied = [v["guard"] for v in report["verdicts"] if not v["allow"]]
        print(f"denied by {', '.join(denied)}: nothing was run")
    return code
