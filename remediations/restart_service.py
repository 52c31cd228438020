"""Restart a systemd unit: `systemctl restart UNIT`, then check it is active.

## When
The first rung for a service that died or hung: an OOM-killed service (the default policy
restarts its unit), a mail daemon whose probe keeps failing, the NFS server unit when
`nfsd` tasks hang on a storage node (before the node itself is restarted).

## Verify
`systemctl is-active UNIT` after the restart job finished (`systemctl restart` waits for
it); by hand: `systemctl status UNIT`, and the MainPID changed
(`systemctl show -p MainPID UNIT`).

## Undo
Nothing to undo: a restart leaves the unit as configured. If the unit does not come
back, `journalctl -u UNIT -b` says why; the ladder climbs to its next rung.

## Safety
The unit name is checked against a strict pattern (letters, digits, `@_.:-`, a unit type
suffix, no leading `-`), so it can never become a `systemctl` option; the argv also
ends options with `--`. The unit is briefly down while it restarts.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.model import Plan, Step
from remediations import ActionContext, Example, ParamSpec
from remediations._common import SYSTEMCTL, duration_s, is_active_step, reasons_of, unit_name

NAME = "restart-service"
SUMMARY = "Restart a systemd unit and check that it is active again."
DISRUPTIVE = False
NEEDS_LEASE = False
PARAMS: Mapping[str, ParamSpec] = {
    "unit": ParamSpec("the unit to restart (default: the subject); 'x' means 'x.service'"),
    "timeout": ParamSpec("how long the restart may take", default="90s"),
}
SETTINGS: Mapping[str, ParamSpec] = {}
EXAMPLE = Example(subject="dovecot.service")


def plan(subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
    unit = unit_name(params.get("unit") or subject)
    timeout = duration_s(params.get("timeout", "90s"), "timeout", hi=3600)
    return Plan(
        action=NAME, subject=subject, disruptive=DISRUPTIVE,
        summary=f"restart {unit}",
        steps=(Step((SYSTEMCTL, "restart", "--", unit), float(timeout), f"restart {unit}"),),
        verify=(is_active_step(unit),),
    )


def preconditions(subject: str, params: Mapping[str, str], ctx: ActionContext) -> list[str]:
    return reasons_of(plan, subject, params, ctx)
