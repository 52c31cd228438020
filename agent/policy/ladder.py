"""Ladders as data: per problem, an ordered list of rungs (`[policy.PROBLEM]`).

    [policy.storage-hang]
    subjects = ["nfsd*"]                 # finding subjects this ladder answers (globs)
    suppressed_by = []                   # no proposal while one of these problems fires
    quiet_s = 3600                       # no firing this long -> back to the first rung
    retry_s = 300                        # a rung held by maintenance/approval/cooldown
    event = false                        # event-shaped problem (an OOM kill): see below
    rungs = [
      { action = "restart-service", subject = "nfs-server.service", verify_s = 300 },
      { action = "node-restart", subject = "{host}", verify_s = 900 },
      { action = "page", params = { message = "{problem} on {host}: {subject}" } },
    ]

Rung keys: action (a remediation name), subject (the action's target; default
"{subject}", the finding's subject), params (strings), verify_s (how long to wait for the
finding to clear before climbing; default 300), needs_approval (default false), lease
(default: the action's NEEDS_LEASE). Placeholders in subject and params: {subject},
{problem}, {host}, filled by plain substitution (agent/detect/template.py), never a shell.
`rungs = []` removes a shipped ladder: the problem is reported, never acted on.

`event = true` is for problems that are events, not states (an OOM kill, a segfault, a
link flap): the finding says it happened, not that it is still happening. A rung is then
verified after its `verify_s` by the problem not occurring again since the rung and by its
target being healthy (the plan's own verify steps pass, no probe finding whose ladder acts
on the same target is firing): a verified rung ends the episode (the finding resolves; if
the rung ran, that is a fix for the flapping guard) and the next occurrence starts again
at the first rung. Seen again, or unhealthy, the ladder climbs ("still firing" is said
only when the fault was seen after the action).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from agent.detect.template import placeholders
from agent.model import EMPTY
from agent.schema import Section, role_tables
from remediations import UnknownAction, load, value_errors

#: the shipped defaults, one file per role (agent.schema.role_tables)
SHIPPED_LADDERS = Path(__file__).parent / "ladders.d"
PLACEHOLDERS = frozenset({"subject", "problem", "host"})
DEFAULT_VERIFY_S = 300.0
DEFAULT_QUIET_S = 1800.0
DEFAULT_RETRY_S = 300.0


@dataclass(frozen=True)
class Rung:
    action: str
    subject: str = "{subject}"
    params: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    verify_s: float = DEFAULT_VERIFY_S
    needs_approval: bool = False
    lease: bool | None = None


@dataclass(frozen=True)
class Ladder:
    problem: str
    rungs: tuple[Rung, ...]
    subjects: tuple[str, ...] = ("*",)
    suppressed_by: tuple[str, ...] = ()
    quiet_s: float = DEFAULT_QUIET_S
    retry_s: float = DEFAULT_RETRY_S
    event: bool = False


def _template(s: Section, name: str, value: str) -> str:
    try:
        names = placeholders(value)
    except ValueError as exc:
        s.error(name, str(exc))
        return value
    for n in names:
        if n not in PLACEHOLDERS:
            s.error(name, f"unknown placeholder {{{n}}}; known: {{host}}, {{problem}}, {{subject}}")
    return value


def parse_rung(s: Section) -> Rung | None:
    action = s.text("action", "")
    if not s.has("action"):
        s.error("action", "is required")
    subject = _template(s, "subject", s.text("subject", "{subject}"))
    ptable = s.table("params")
    params: dict[str, str] = {}
    for key in ptable.raw:
        params[key] = _template(ptable, key, ptable.text(key, ""))
    ptable.finish()
    rung = Rung(
        action=action,
        subject=subject,
        params=MappingProxyType(params),
        verify_s=s.number("verify_s", DEFAULT_VERIFY_S, minimum=0.0),
        needs_approval=s.flag("needs_approval", False),
        lease=s.flag("lease", False) if s.has("lease") else None,
    )
    s.finish()
    if not action:
        return None
    try:
        remediation = load(action)
    except UnknownAction as exc:
        s.error("action", str(exc))
        return None
    except ImportError as exc:
        s.error("action", f"the remediation module for {action!r} is broken: {exc}")
        return None
    for problem in remediation.resolve(params)[1]:
        s.error("params", f"{action}: {problem}")
    for key, value in params.items():  # a literal value is checked now, not mid-incident
        if "{" not in value:
            for reason in value_errors(remediation.PARAMS.get(key), value):
                ptable.error(key, f"{action}: {reason}")
    if "{" not in subject:
        for reason in value_errors(remediation.SUBJECT, subject):
            s.error("subject", f"{action}: {reason}")
    return rung


def parse_ladder(problem: str, s: Section) -> Ladder | None:
    rung_sections = s.table_list("rungs")
    if not s.has("rungs"):
        s.error("rungs", "is required (an empty list removes the ladder)")
    rungs = [parse_rung(r) for r in rung_sections]
    ladder = Ladder(
        problem=problem,
        rungs=tuple(r for r in rungs if r is not None),
        subjects=s.str_list("subjects", ("*",)),
        suppressed_by=s.str_list("suppressed_by", ()),
        quiet_s=s.number("quiet_s", DEFAULT_QUIET_S, minimum=0.0),
        retry_s=s.number("retry_s", DEFAULT_RETRY_S, minimum=1.0),
        event=s.flag("event", False),
    )
    s.finish()
    if None in rungs:
        return None
    return ladder


def _parse_tables(top: Section, into: dict[str, Ladder]) -> None:
    if not top.has("policy"):
        return
    for problem, sub in top.tables("policy"):
        ladder = parse_ladder(problem, sub)
        if ladder is None:
            continue
        if ladder.rungs:
            into[problem] = ladder
        else:
            into.pop(problem, None)


def parse_policy(top: Section, role: str) -> tuple[Ladder, ...]:
    """The effective ladders: the role's shipped defaults (agent/policy/ladders.d/), then
    the user's `[policy.*]`."""
    merged: dict[str, Ladder] = {}
    for file, raw in role_tables(SHIPPED_LADDERS, role):
        _parse_tables(Section({"policy": raw.get("policy", {})}, file, "", top.errors), merged)
    _parse_tables(top, merged)
    return tuple(merged.values())
