"""Page a person: log the page, and run the configured paging command.

## When
The top rung of every ladder, and the only action for problems a host cannot fix by
itself: raid-degraded, mce, memory-ecc, `nfs-not-responding` on a mail host, a storm,
flapping. Until the coordinator delivers alerts with retries, the agent pages through
the site's command.

## What it does
1. `logger -s -t nodewarden -p user.crit -- "PAGE host=... problem=... subject=...:
   MESSAGE"`: the page is in the journal (and in the step's captured stderr);
2. the `command` setting, if configured, e.g.
   `["/usr/local/bin/page-oncall", "{problem}", "{subject}", "{message}"]` — placeholders
   `{problem}`, `{subject}`, `{message}`, `{hostname}`, `{severity}` fill whole tokens.
With a command configured, a logger failure does not stop the page (exit 1 accepted).

## Verify
The paging command's exit code. By hand: `journalctl -t nodewarden -p crit`.

## Undo
Acknowledge the page in the paging system.

## Safety
Values are made printable (control characters become spaces), capped at 500
characters, and leading `-` is stripped, so a subject cannot become an option of the
paging command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from agent.model import Plan, Step
from remediations import ActionContext, Example, ParamSpec, Remediation
from remediations._common import (
    a_duration,
    an_argv,
    duration_s,
    fill_argv,
    one_of,
    setting_argv,
    setting_str,
)

SEVERITIES = {"critical": "user.crit", "error": "user.err", "warning": "user.warning"}


def clean(text: str) -> str:
    """Printable, one line, at most 500 characters, never starting with '-'."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return re.sub(r"^[\s-]+", "", text[:500]).strip()  # "- -x" must not become "-x"


class Page(Remediation):
    """The subject, as given, is its target: pages fold per problem and subject."""

    NAME = "page"
    SUMMARY = "Page the on-call person: log it and run the configured paging command."
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = {
        "problem": ParamSpec("the problem to name in the page", default="unknown"),
        "message": ParamSpec("what the person should know",
                             default="nodewarden needs a person"),
        "severity": ParamSpec("critical, error or warning", default="critical",
                              check=one_of("severity", ("critical", "error", "warning"))),
    }
    SETTINGS: ClassVar[Mapping[str, ParamSpec]] = {
        "command": ParamSpec("paging argv ({problem} {subject} {message} {hostname} "
                             "{severity})", check=an_argv("command")),
        "timeout": ParamSpec("how long the paging command may run", default="30s",
                             check=a_duration("timeout", hi=600)),
    }
    SUBJECT = ParamSpec("what the page is about (any text)")
    EXAMPLE = Example(
        subject="nas-a1", params={"problem": "nfs-not-responding",
                                  "message": "nfs server nas-a1 not responding"},
        settings={"command": ["/usr/local/bin/page-oncall", "{problem}", "{subject}",
                              "{message}"]})
    # a page is never budgeted and never cooled down: repeats are folded (PageFoldGuard)

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        severity = str(one_of("severity", tuple(SEVERITIES))(params["severity"]))
        values = {
            "problem": clean(params["problem"]) or "unknown",
            "subject": clean(subject) or "none",
            "message": clean(params["message"]) or "nodewarden needs a person",
            "hostname": ctx.hostname, "severity": severity,
        }
        command = setting_argv(ctx, "command")
        text = (f"PAGE host={values['hostname']} problem={values['problem']} "
                f"subject={values['subject']}: {values['message']}")
        steps = [Step(("logger", "-s", "-t", "nodewarden", "-p", SEVERITIES[severity], "--",
                       text), 15.0, "log the page", ok_exit=(0, 1) if command else (0,))]
        if command is not None:
            timeout = duration_s(setting_str(ctx, "timeout"), "timeout", hi=600)
            steps.append(Step(fill_argv(command, values), float(timeout), "paging command"))
        return Plan(self.NAME, subject, tuple(steps), (), self.DISRUPTIVE,
                    f"page: {values['problem']} on {values['subject']}"
                    + ("" if command else " (journal only: no paging command configured)"))


ACTION = Page()
