"""Stop a runaway process or unit: SIGTERM, then SIGKILL after a grace period.

## When
A process that is not a service (a provisioning script, a stuck cron job) drives the
load, and throttling it did not help; the default policy stops it on the rung after
throttle-unit. The subject is a PID or a process name (the kernel's `comm`, as `ps -o
comm` shows it; every process with that exact name is stopped).

With the parameter `unit` (the default policy's `runaway-unit` ladder passes the unit
whose `unit.<unit>.cpu_pct` fired), the whole systemd unit is stopped instead: a
`.service` (incident 003: the provisioning run). A `.scope` (a cron job or a login session
running the script) is never stopped automatically: its runaway is paged (the default
policy's `runaway-scope`); stop it by PID, or with `systemctl stop`, by hand.

## What it does
The helper `python3 -m agent.execute.stop_process stop` opens a pidfd for each target
(so a recycled PID is never signalled), sends SIGTERM, waits up to `grace` for the exit,
then sends SIGKILL. It repeats the refusals below at the moment it acts.

### With `unit`
`timeout GRACE systemctl stop -- UNIT`: systemd sends the unit's stop signal (SIGTERM
unless the unit says otherwise, after its ExecStop=) to every process of the unit and the
unit is not restarted by `Restart=`; after GRACE seconds the command gives up waiting
(exit 124 is fine; the stop job goes on), then `systemctl kill --signal=SIGKILL -- UNIT`
kills whatever is left (exit 1 is fine: a transient unit that stopped is unloaded).

## Verify
`python3 -m agent.execute.stop_process gone --pid N` (or `--name`) exits 0 when no such
process runs any more (a zombie waiting for its parent counts as gone). By hand:
`ps -o pid,stat,comm -p N`. With `unit`: `systemctl is-active --quiet -- UNIT` exits 3
(inactive, failed, or no such unit any more).

## Undo
A stopped process cannot be resumed; restart what it was part of by hand if it was
needed (the runbook of the script's owner says how). A stopped service unit starts again
with `systemctl start UNIT` (a throttle-unit limit set before still applies until reboot).

## Safety
Never PID 1, never the agent's own PID, never a kernel thread, never a process of a
unit in `protected_units` (the agent's own unit, sshd, journald...): the preconditions
refuse, and the helper refuses again when it acts.

With `unit`: only `.service` units; never a unit in `protected_units`, in
the setting `protect` (globs), or in the built-in list (`init.scope`, `systemd-*`,
`dbus*`, `ssh*`, `sshd*`, `nodewarden*`, `*getty*`, `user-runtime-dir@*`), and the
preconditions refuse the unit the agent itself runs in (from /proc/AGENT_PID/cgroup) and
a unit that is not running (ActiveState inactive: nothing to stop).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from agent.execute.stop_process import PROC, find_by_name, read_process, refusal, unit_of
from agent.model import Budget, Plan, Step
from remediations import ActionContext, Example, InvalidParams, ParamSpec, Remediation
from remediations._common import (
    SYSTEMCTL,
    a_duration,
    a_service,
    duration_s,
    globs,
    helper,
    service_target,
    service_unit,
    setting_list,
)

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
                            f"{MAX_NAME} characters, no '/', no leading '-'); for a systemd "
                            f"unit, pass the parameter unit=NAME")
    return "--name", text


#: `timeout` exits 124 when the grace ran out; systemctl kill exits 1 on a unit that is gone
TIMEOUT_EXPIRED = 124


def _unit(text: str, ctx: ActionContext) -> str:
    """The unit to stop, refused when it is not a service, or is protected."""
    return service_unit(text, ctx, setting_list(ctx, "protect"))


def _unit_plan(subject: str, unit: str, grace: int) -> Plan:
    return Plan(
        action=StopProcess.NAME, subject=subject, disruptive=StopProcess.DISRUPTIVE,
        summary=f"stop unit {unit}: SIGTERM to every process, SIGKILL after {grace}s",
        steps=(
            Step(("timeout", str(grace), SYSTEMCTL, "stop", "--", unit), grace + 15.0,
                 f"stop {unit}: its stop signal to every process, wait up to {grace}s",
                 ok_exit=(0, TIMEOUT_EXPIRED)),
            Step((SYSTEMCTL, "kill", "--signal=SIGKILL", "--", unit), 15.0,
                 f"SIGKILL what is left of {unit} (exit 1: already gone)", ok_exit=(0, 1)),
        ),
        verify=(Step((SYSTEMCTL, "is-active", "--quiet", "--", unit), 15.0,
                     f"{unit} is no longer active", ok_exit=(3,)),),
    )


def _unit_preconditions(unit: str, ctx: ActionContext, proc: Path) -> list[str]:
    """Never the agent's own unit; nothing to do for a unit that is not active."""
    try:
        own = unit_of((proc / str(ctx.agent_pid) / "cgroup").read_text())
    except OSError:
        own = None
    if own == unit:
        return [f"{unit} is the unit the agent runs in"]
    if ctx.runner is not None:
        # not is-active: a oneshot service running a script is "activating", exit 3
        result = ctx.runner.run(Step(
            (SYSTEMCTL, "show", "--property=ActiveState", "--value", "--", unit), 15.0,
            f"state of {unit}"))
        if result.ran and result.exit_code == 0 and result.stdout.strip() == "inactive":
            return [f"unit {unit} is not running: nothing to stop"]
    return []


class StopProcess(Remediation):
    """The target is the unit (with `unit`), else the PID or process name as given."""

    NAME = "stop-process"
    SUMMARY = ("Stop a runaway process or unit (TERM, then KILL after a grace); never PID 1 "
               "or the agent.")
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "grace": ParamSpec("time between SIGTERM and SIGKILL", default="10s",
                           check=a_duration("grace", hi=600)),
        "unit": ParamSpec("stop this systemd service unit instead of a PID or "
                          "name: systemctl stop, SIGKILL after the grace",
                          check=a_service("unit")),
    }
    SETTINGS: ClassVar[Mapping[str, ParamSpec]] = {
        "protect": ParamSpec("units never stopped with `unit` (globs), on top of "
                             "protected_units and the built-in list", check=globs("protect")),
    }
    SUBJECT = ParamSpec("a PID or a process name (comm)", check=lambda v: _target(str(v)))
    EXAMPLE = Example(subject="provision.py")
    BUDGET = Budget(10, 3600.0)

    def __init__(self, proc: Path = PROC) -> None:
        #: where the agent's own cgroup is read (a test's own tree)
        self.proc = proc

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        grace = duration_s(params["grace"], "grace", hi=600)
        if params.get("unit"):
            return _unit_plan(subject, _unit(params["unit"], ctx), grace)
        flag, who = _target(subject)
        if flag == "--pid" and int(who) in (1, ctx.agent_pid):
            raise InvalidParams(f"pid {who} is "
                                + ("init" if who == "1" else "the agent itself"))
        refuse = ("--refuse-pid", "1", "--refuse-pid", str(ctx.agent_pid))
        protect = tuple(x for unit in ctx.protected_units for x in ("--protect", unit))
        stop = helper(ctx, "stop_process", "stop", flag, who, "--grace", str(grace),
                      *refuse, *protect)
        return Plan(
            action=self.NAME, subject=subject, disruptive=self.DISRUPTIVE,
            summary=f"stop {flag[2:]} {who}: SIGTERM, SIGKILL after {grace}s",
            steps=(Step(stop, grace + 15.0, f"TERM, KILL after {grace}s"),),
            verify=(Step(helper(ctx, "stop_process", "gone", flag, who), 15.0,
                         f"{flag[2:]} {who} is gone"),),
        )

    def target(self, subject: str, params: Mapping[str, str]) -> str:
        return service_target(subject, params) if params.get("unit") else subject.strip()

    def preconditions(
        self, subject: str, params: Mapping[str, str], ctx: ActionContext
    ) -> list[str]:
        reasons = super().preconditions(subject, params, ctx)
        if reasons:
            return reasons
        ctx = self.with_settings(ctx)
        if params.get("unit"):
            return _unit_preconditions(_unit(params["unit"], ctx), ctx, self.proc)
        flag, who = _target(subject)
        found = [read_process(int(who))] if flag == "--pid" else find_by_name(who)
        infos = [i for i in found if i is not None and i.alive]
        if not infos:
            return [f"no running process {subject!r}"]
        refused = [r for i in infos
                   if (r := refusal(i, (ctx.agent_pid,), ctx.protected_units))]
        if flag == "--pid" or len(refused) == len(infos):
            return refused
        return []


ACTION = StopProcess()
