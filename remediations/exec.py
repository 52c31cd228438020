"""Run a site command: an argv from `[actions.exec] commands`, chosen by name.

## When
For the fixes only the site knows: revert the spam filter's last change, pause the
provisioning queue, move instances to other hardware. A policy rung names the command;
an operator runs it with `nodewarden remediate exec --param command=NAME`.

## Configuration
```toml
[actions.exec.commands]
revert-spamfilter = ["/usr/local/sbin/spamfilter-revert", "--host", "{hostname}"]
pause-provisioning = ["/usr/local/bin/provq", "pause", "{subject}"]
```
Placeholders `{subject}`, `{hostname}` and `{arg}` (the `arg` parameter) fill *whole*
argv tokens; a token such as `--unit={subject}` is refused, and a value beginning with
`-` is refused, so no value ever becomes an option or is parsed by a shell.

## Verify
The command's exit code (0 = done). Add a check to the command itself if it needs one.

## Undo
The site's runbook for the command.

## Safety
Only commands listed in the configuration can run, by absolute path. Not disruptive by
declaration: if a command is, give its policy rung a lease or an approval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from agent.model import Budget, Plan, Step
from remediations import ActionContext, Example, InvalidParams, ParamSpec, Remediation
from remediations._common import (
    a_duration,
    argv_table,
    duration_s,
    fill_argv,
    setting_str,
)


def command_argv(name: str, ctx: ActionContext) -> tuple[str, ...]:
    table = ctx.settings.get("commands", {})
    if not isinstance(table, Mapping):
        raise InvalidParams("setting commands must be a table of name = [argv...]")
    argv = table.get(name)
    if argv is None:
        known = ", ".join(sorted(str(k) for k in table)) or "none configured"
        raise InvalidParams(f"no site command {name!r} in [actions.exec.commands] ({known})")
    if not isinstance(argv, list | tuple) or not argv or \
            not all(isinstance(t, str) for t in argv) or not str(argv[0]).startswith("/"):
        raise InvalidParams(f"command {name!r} must be an argv list with an absolute path")
    return tuple(argv)


class Exec(Remediation):
    """The subject, as given, is its target: a site command acts on what its ladder
    names."""

    NAME = "exec"
    SUMMARY = "Run a site command configured in [actions.exec] commands (argv, no shell)."
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "command": ParamSpec("name of the command in [actions.exec] commands", required=True),
        "arg": ParamSpec("value for the {arg} placeholder", default=""),
    }
    SETTINGS: ClassVar[Mapping[str, ParamSpec]] = {
        "commands": ParamSpec("table: command name -> argv list",
                              check=argv_table("commands")),
        "timeout": ParamSpec("how long a command may run", default="60s",
                             check=a_duration("timeout", hi=3600)),
    }
    SUBJECT = ParamSpec("what the command acts on (fills {subject})")
    EXAMPLE = Example(
        subject="spamd", params={"command": "revert-spamfilter"},
        settings={"commands": {"revert-spamfilter": [
            "/usr/local/sbin/spamfilter-revert", "--host", "{hostname}", "{subject}"]}})
    BUDGET = Budget(6, 3600.0)

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        name = params["command"]
        template = command_argv(name, ctx)
        values = {"subject": subject, "hostname": ctx.hostname, "arg": params["arg"]}
        timeout = duration_s(setting_str(ctx, "timeout"), "timeout", hi=3600)
        return Plan(self.NAME, subject, (Step(fill_argv(template, values), float(timeout),
                                              f"site command {name}"),),
                    (), self.DISRUPTIVE, f"run site command {name}")


ACTION = Exec()
