"""Stop a runaway process: SIGTERM, then SIGKILL after a grace period.

## When
A process that is not a service (a provisioning script, a stuck cron job) drives the
load, and throttling it did not help; the default policy stops it on the rung after
throttle-unit. The subject is a PID or a process name (the kernel's `comm`, as `ps -o
comm` shows it; every process with that exact name is stopped).

## What it does
The helper `python3 -m agent.execute.stop_process stop` opens a pidfd for each target
(so a recycled PID is never signalled), sends SIGTERM, waits up to `grace` for the exit,
then sends SIGKILL. It repeats the refusals below at the moment it acts.

## Verify
`python3 -m agent.execute.stop_process gone --pid N` (or `--name`) exits 0 when no such
process runs any more (a zombie waiting for its parent counts as gone). By hand:
`ps -o pid,stat,comm -p N`.

## Undo
A stopped process cannot be resumed; restart what it was part of by hand if it was
needed (the runbook of the script's owner says how).

## Safety
Never PID 1, never the agent's own PID, never a kernel thread, never a process of a
unit in `protected_units` (the agent's own unit, sshd, journald...): the preconditions
refuse, and the helper refuses again when it acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from agent.execute.stop_process import PROC, find_by_name, read_process, refusal
from agent.model import Plan, Step
from remediations import ActionContext, Example, InvalidParams, ParamSpec
from remediations._common import duration_s, helper, reasons_of

NAME = "stop-process"
SUMMARY = "Stop a runaway process (TERM, then KILL after a grace); never PID 1 or the agent."
DISRUPTIVE = False
NEEDS_LEASE = False
PARAMS: Mapping[str, ParamSpec] = {
    "grace": ParamSpec("time between SIGTERM and SIGKILL", default="10s"),
}
SETTINGS: Mapping[str, ParamSpec] = {}
EXAMPLE = Example(subject="provision.py")
MAX_NAME = 15  # TASK_COMM_LEN - 1


def _target(subject: str) -> tuple[str, str]:
    """("--pid", "123") or ("--name", "comm")."""
    text = subject.strip()
    if text.isdigit():
        if int(text) <= 0:
            raise InvalidParams(f"pid {text} is not a process")
        return "--pid", str(int(text))
    if not text or len(text) > MAX_NAME or text.startswith("-") or "/" in text or \
            not text.isprintable():
        raise InvalidParams(f"{subject!r} is neither a PID nor a process name (comm, at most "
                            f"{MAX_NAME} characters, no '/', no leading '-')")
    return "--name", text


def plan(subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
    flag, who = _target(subject)
    if flag == "--pid" and int(who) in (1, ctx.agent_pid):
        raise InvalidParams(f"pid {who} is " + ("init" if who == "1" else "the agent itself"))
    grace = duration_s(params.get("grace", "10s"), "grace", hi=600)
    refuse = ("--refuse-pid", "1", "--refuse-pid", str(ctx.agent_pid))
    protect = tuple(x for unit in ctx.protected_units for x in ("--protect", unit))
    stop = helper(ctx, "stop_process", "stop", flag, who, "--grace", str(grace),
                  *refuse, *protect)
    return Plan(
        action=NAME, subject=subject, disruptive=DISRUPTIVE,
        summary=f"stop {flag[2:]} {who}: SIGTERM, SIGKILL after {grace}s",
        steps=(Step(stop, grace + 15.0, f"TERM, KILL after {grace}s"),),
        verify=(Step(helper(ctx, "stop_process", "gone", flag, who), 15.0,
                     f"{flag[2:]} {who} is gone"),),
    )


def preconditions(
    subject: str, params: Mapping[str, str], ctx: ActionContext, proc: Path = PROC
) -> list[str]:
    reasons = reasons_of(plan, subject, params, ctx)
    if reasons:
        return reasons
    flag, who = _target(subject)
    found = [read_process(int(who), proc)] if flag == "--pid" else find_by_name(who, proc)
    infos = [i for i in found if i is not None and i.alive]
    if not infos:
        return [f"no running process {subject!r}"]
    refused = [r for i in infos if (r := refusal(i, (ctx.agent_pid,), ctx.protected_units))]
    if flag == "--pid" or len(refused) == len(infos):
        return refused
    return []
