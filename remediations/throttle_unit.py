"""Throttle a runaway unit: `systemctl set-property --runtime UNIT CPUQuota=20% IOWeight=10`.

## When
A unit (or a script run as a transient unit) drives the load: a spam filter stuck in a
processing loop after a maintenance change, a provisioning run that overloads its hosts.
The default policy throttles first and stops the process on the next rung.

## Verify
The unit's properties read back as set (`systemctl show -p CPUQuotaPerSecUSec -p IOWeight
UNIT`; CPUQuota=20% shows as 200ms per second), through the helper
`python3 -m agent.execute.unit_props`.

## Undo
`--runtime` changes last until the next reboot or until reset:
`systemctl set-property --runtime UNIT CPUQuota= IOWeight=` restores the configured
values (an empty value resets a property); a `systemctl daemon-reload` does not.

## Safety
Only a `.service` is throttled; units in `protected_units` and the built-in list
(`init.scope`, `systemd-*`, `dbus*`, `ssh*`, the agent's own unit, gettys, the services
that reboot or power off the node) are refused: throttling sshd would lock the operator
out of the host being rescued.
CPUQuota is 1-10000 % (100 % = one CPU), IOWeight 1-10000 (default 100).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from agent.model import Budget, Plan, Step
from remediations import ActionContext, Example, InvalidParams, ParamSpec, Remediation
from remediations._common import (
    SYSTEMCTL,
    a_service,
    an_integer,
    helper,
    integer,
    service_target,
    service_unit,
)

_PERCENT = re.compile(r"^(\d{1,5})%?$")


def _quota(text: str) -> int:
    m = _PERCENT.match(text)
    if not m:
        raise InvalidParams(f"cpu_quota {text!r} is not a percentage")
    return integer(m.group(1), "cpu_quota", 1, 10000)


class ThrottleUnit(Remediation):
    NAME = "throttle-unit"
    SUMMARY = "Limit a unit's CPU and IO at runtime (systemd CPUQuota= and IOWeight=)."
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "unit": ParamSpec("the unit to throttle (default: the subject)",
                          check=a_service("unit")),
        "cpu_quota": ParamSpec("CPUQuota= in percent of one CPU, e.g. 20%", default="20%",
                               check=lambda v: _quota(str(v))),
        "io_weight": ParamSpec("IOWeight= between 1 and 10000 (default weight is 100)",
                               default="10", check=an_integer("io_weight", 1, 10000)),
    }
    SUBJECT = ParamSpec("the .service to throttle", check=a_service("subject"))
    EXAMPLE = Example(subject="spamd.service", params={"cpu_quota": "20%", "io_weight": "10"})
    BUDGET = Budget(10, 3600.0)

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        unit = service_unit(params.get("unit") or subject, ctx)
        quota = _quota(params["cpu_quota"])
        weight = integer(params["io_weight"], "io_weight", 1, 10000)
        props = (f"CPUQuota={quota}%", f"IOWeight={weight}")
        return Plan(
            action=self.NAME, subject=subject, disruptive=self.DISRUPTIVE,
            summary=f"throttle {unit} to {' '.join(props)} until reboot",
            steps=(Step((SYSTEMCTL, "set-property", "--runtime", "--", unit, *props), 30.0,
                        f"throttle {unit}"),),
            verify=(Step(helper(ctx, "unit_props", unit, *props), 30.0,
                         f"{unit} has {' '.join(props)}"),),
        )

    def target(self, subject: str, params: Mapping[str, str]) -> str:
        """The unit this acts on ("spamd" = "spamd.service")."""
        return service_target(subject, params)


ACTION = ThrottleUnit()
