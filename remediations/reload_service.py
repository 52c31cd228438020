"""Reload a systemd unit's configuration: `systemctl reload UNIT`, then check it is active.

## When
After a configuration change the service has not picked up, or to make a daemon reopen
its files (a reload keeps connections, unlike a restart). A policy may use it as a
gentler rung before restart-service. With `fallback=restart` it runs
`systemctl reload-or-restart`, for units that cannot reload.

## Verify
`systemctl is-active UNIT`; by hand: `journalctl -u UNIT -n 20` shows the reload and
no errors.

## Undo
Nothing to undo. If the new configuration is wrong, revert the file and reload again.

## Safety
Only a `.service` that is not protected is reloaded (the same refusals as
restart-service). The unit name is checked against a strict pattern and ends the options
(`--`). A unit without a reload command fails the step (exit code 1) unless
`fallback=restart`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from agent.model import Budget, Plan, Step
from remediations import ActionContext, Example, ParamSpec, Remediation
from remediations._common import (
    SYSTEMCTL,
    a_duration,
    a_service,
    duration_s,
    is_active_step,
    one_of,
    service_target,
    service_unit,
)

FALLBACKS = ("none", "restart")

class ReloadService(Remediation):
    NAME = "reload-service"
    SUMMARY = "Reload a systemd unit (optionally reload-or-restart) and check it is active."
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "unit": ParamSpec("the unit to reload (default: the subject); 'x' means 'x.service'",
                          check=a_service("unit")),
        "fallback": ParamSpec("'none' (reload only) or 'restart' (reload-or-restart)",
                              default="none", check=one_of("fallback", FALLBACKS)),
        "timeout": ParamSpec("how long the reload may take", default="60s",
                             check=a_duration("timeout", hi=3600)),
    }
    SUBJECT = ParamSpec("the .service to reload", check=a_service("subject"))
    EXAMPLE = Example(subject="postfix.service")
    BUDGET = Budget(12, 3600.0)

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        unit = service_unit(params.get("unit") or subject, ctx)
        verb = "reload-or-restart" if one_of("fallback", FALLBACKS)(
            params["fallback"]) == "restart" else "reload"
        timeout = duration_s(params["timeout"], "timeout", hi=3600)
        return Plan(
            action=self.NAME, subject=subject, disruptive=self.DISRUPTIVE,
            summary=f"{verb} {unit}",
            steps=(Step((SYSTEMCTL, verb, "--", unit), float(timeout), f"{verb} {unit}"),),
            verify=(is_active_step(unit),),
        )

    def target(self, subject: str, params: Mapping[str, str]) -> str:
        """The unit this acts on ("dovecot" = "dovecot.service")."""
        return service_target(subject, params)


ACTION = ReloadService()
