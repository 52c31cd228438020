"""Restart this host: optional drain, a write-ahead intent record, then `systemctl reboot`.

## When
The last automatic rung when the kernel itself is wedged: hung `nfsd` tasks with high
load on a storage node that a restart of the NFS server unit did not clear (the default
storage policy: restart the NFS server unit, then the node, then page). Never for a
mail host whose NFS server is not responding: the cause is the filer.

## What it does
1. (optional) the site's `drain_command`, e.g. moving the host out of a load balancer;
2. `python3 -m agent.execute.intent write ...`: a durable (fsync'd) intent record under
   STATE_DIR/intents/, written *before* the reboot, shown in the dry-run. When it runs
   under a coordinator's lease, the record carries the lease: its id, the coordinator
   that granted it (`--coordinator=host:port`) and its end;
3. `systemctl reboot`.
After the boot the agent reads its pending intents before anything else
(`reconcile_intents`): a new boot id means the restart happened on purpose and the
outcome is recorded; the same boot id means it did not. The lease is held through the
reboot, which keeps the group from restarting a second filer while this one comes back.
Once the intent is reconciled, the agent gives the lease back to the coordinator that
granted it, through the reporter's spool (so a coordinator out of reach gets it later).
An agent that no longer reports to that coordinator says so and leaves the lease to run
out by its TTL.

## Verify
After the boot: `python3 -m agent.execute.intent list --state-dir /var/lib/nodewarden`
shows the intent with `outcome: rebooted` (and, under a lease, `lease_outcome: given back
to HOST:PORT`); `journalctl --list-boots` shows the new boot; `nodewarden-coordinator
leases` shows the lease released.

## Undo
Nothing to undo. Undrain the host if the drain command did not do it by itself.

## Safety
Disruptive, needs a lease from the coordinator (a group never restarts more than K hosts
at once) and is counted by the budget guard across reboots (no reboot loops). If the
intent cannot be written, the reboot step does not run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from agent.model import Budget, Plan, Step
from remediations import ActionContext, Example, InvalidParams, ParamSpec, Remediation
from remediations._common import (
    SYSTEMCTL,
    a_duration,
    an_argv,
    duration_s,
    fill_argv,
    helper,
    one_of,
    setting_argv,
    setting_str,
)

DRAIN = ("auto", "yes", "no")

def _clean(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:500]


class NodeRestart(Remediation):
    """The target is the node (the host name)."""

    NAME = "node-restart"
    SUMMARY = "Reboot this host after an optional drain and a write-ahead intent record."
    DISRUPTIVE = True
    NEEDS_LEASE = True
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "reason": ParamSpec("why, recorded in the intent",
                            default="node-restart by nodewarden"),
        "drain": ParamSpec("auto (drain when drain_command is set), yes or no",
                           default="auto", check=one_of("drain", DRAIN)),
    }
    SETTINGS: ClassVar[Mapping[str, ParamSpec]] = {
        "drain_command": ParamSpec("argv run before the reboot ({hostname} {subject})",
                                   check=an_argv("drain_command")),
        "drain_timeout": ParamSpec("how long the drain may take", default="120s",
                                   check=a_duration("drain_timeout")),
    }
    SUBJECT = ParamSpec("this host's name")
    EXAMPLE = Example(subject="nas-a1", params={"reason": "hung nfsd tasks, load 40"})
    # docs/architecture.md safety property 3: at most R node restarts per host per 24 h, across
    # reboots
    BUDGET = Budget(2, 86400.0, "host")
    COOLDOWN_S = 3600.0

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        drain = one_of("drain", DRAIN)(params["drain"])
        command = setting_argv(ctx, "drain_command")
        if drain == "yes" and command is None:
            raise InvalidParams("drain=yes needs the drain_command setting")
        steps = []
        if command is not None and drain != "no":
            timeout = duration_s(setting_str(ctx, "drain_timeout"), "drain_timeout")
            values = {"hostname": ctx.hostname, "subject": subject}
            steps.append(Step(fill_argv(command, values), float(timeout), "drain this host"))
        reason = _clean(params["reason"]) or "unspecified"
        lease = () if ctx.lease is None else (
            f"--lease={ctx.lease.id}", f"--coordinator={ctx.lease.granted_by}",
            f"--lease-expires={ctx.lease.expires_at:.3f}")
        steps.append(Step(
            helper(ctx, "intent", "write", f"--state-dir={ctx.state_dir}",
                   f"--action={self.NAME}", f"--subject={_clean(subject) or ctx.hostname}",
                   f"--reason={reason}", *lease),
            30.0, "write-ahead intent record"))
        steps.append(Step((SYSTEMCTL, "reboot"), 60.0, "reboot this host"))
        return Plan(self.NAME, subject, tuple(steps), (), self.DISRUPTIVE,
                    f"reboot {ctx.hostname}" + (" after draining" if len(steps) == 3 else ""))


ACTION = NodeRestart()
