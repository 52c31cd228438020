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
Only a `.service` is restarted ("dovecot" means "dovecot.service"), whatever named it: a
target, socket, scope, slice or mount is refused (`reboot.target` would reboot the node
without the lease and budget of node-restart), and so are the protected units (the
built-in list: `init.scope`, `systemd-*`, `dbus*`, `ssh*`, `sshd*`, `nodewarden*`,
`*getty*`, `user-runtime-dir@*`; the services that reboot, power off, halt, kexec or
enter rescue/emergency; and `[actions] protected_units`). The unit name is checked
against a strict pattern (letters, digits, `@_.:-`, no leading `-`), so it can never
become a `systemctl` option; the argv also ends options with `--`. The unit is briefly
down while it restarts. An OOM-killed service's unit comes from the kernel's own OOM
report (`task_memcg=/system.slice/UNIT`), never from the killed process's name.
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
    service_target,
    service_unit,
)


class RestartService(Remediation):
    NAME = "restart-service"
    SUMMARY = "Restart a systemd unit and check that it is active again."
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "unit": ParamSpec("the unit to restart (default: the subject); 'x' means 'x.service'",
                          check=a_service("unit")),
        "timeout": ParamSpec("how long the restart may take", default="90s",
                             check=a_duration("timeout", hi=3600)),
    }
    SUBJECT = ParamSpec("the .service to restart", check=a_service("subject"))
    EXAMPLE = Example(subject="dovecot.service")
    BUDGET = Budget(6, 3600.0)

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        unit = service_unit(params.get("unit") or subject, ctx)
        timeout = duration_s(params["timeout"], "timeout", hi=3600)
        return Plan(
            action=self.NAME, subject=subject, disruptive=self.DISRUPTIVE,
            summary=f"restart {unit}",
            steps=(Step((SYSTEMCTL, "restart", "--", unit), float(timeout),
                        f"restart {unit}"),),
            verify=(is_active_step(unit),),
        )

    def target(self, subject: str, params: Mapping[str, str]) -> str:
        """The unit this acts on ("dovecot" = "dovecot.service")."""
        return service_target(subject, params)


ACTION = RestartService()
