"""Remediation actions, one module each, found by name.

`remediations/restart_service.py` is the action `restart-service`. Each module describes
itself (STYLE.md 6) so that docs, `--help` and the guard chain come from the declarations:

    NAME: str                     # "restart-service"
    SUMMARY: str                  # one line
    DISRUPTIVE: bool              # takes a service or the node away for a while
    NEEDS_LEASE: bool             # the coordinator must grant a lease first
    PARAMS: Mapping[str, ParamSpec]
    SETTINGS: Mapping[str, ParamSpec]  # keys of the [actions.NAME] table it reads
    SUBJECT: ParamSpec            # what the subject is (its `check` refuses a literal one)
    EXAMPLE: Example              # subject, params and settings for the runbook's dry-run
    __doc__                       # the runbook: what it does, when, how to undo it
    def plan(subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan
    def target(subject: str, params: Mapping[str, str]) -> str
        # the canonical thing acted on ("dovecot" and "dovecot.service" are one unit):
        # cooldowns, budgets and the flapping guard are keyed on it
    def preconditions(subject: str, params: Mapping[str, str], ctx: ActionContext) -> list[str]
        # reasons the action must not run now (empty = ok); may run read-only commands
        # through ctx.runner, never a destructive one

`plan()` is pure: the same inputs give the same Plan, which dry-run prints and execute runs.
It raises InvalidParams when a parameter or setting is unsafe or malformed; preconditions()
then returns the same reasons. `build_plan()` does load + resolve_params + plan in one call.
A ParamSpec's `check` runs the validation plan() applies to that one value, so `check`
refuses a bad setting or a bad literal rung parameter when the configuration is loaded,
not when a plan is built in the middle of an incident.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Protocol, cast

from agent.model import EMPTY, Plan, Step, StepResult

if TYPE_CHECKING:
    from agent.clock import Clock


class ReadOnlyRunner(Protocol):
    """Runs a read-only step (used by preconditions and verification)."""

    def run(self, step: Step) -> StepResult: ...


@dataclass(frozen=True)
class ParamSpec:
    description: str
    required: bool = False
    default: str | None = None
    #: validates one value (raises InvalidParams with the reason); None: any string
    check: Callable[[object], object] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ActionContext:
    """What an action may know about the host it runs on.

    `settings` holds the `[actions.NAME]` table of the configuration (site commands,
    HAProxy socket, allowlists...), as strings or lists of strings.
    """

    hostname: str
    state_dir: Path
    agent_pid: int
    clock: Clock
    runner: ReadOnlyRunner | None = None
    settings: Mapping[str, object] = field(default_factory=lambda: EMPTY)
    protected_units: tuple[str, ...] = ()
    #: addresses no action may block, whatever the evidence says, gathered by the driver
    #: from the host (agent/sources/hostaddrs.py): (address or CIDR, why) pairs such as
    #: ("192.0.2.10", "an address of this host (eth0)"), ("192.0.2.1", "default gateway")
    never_block: tuple[tuple[str, str], ...] = ()
    #: the interpreter that runs helper steps (`python3 -m agent.execute...`)
    python: str = field(default_factory=lambda: sys.executable or "python3")


@dataclass(frozen=True)
class Example:
    """Inputs for the runbook's example dry-run (docs are generated from them)."""

    subject: str
    params: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    settings: Mapping[str, object] = field(default_factory=lambda: EMPTY)


class InvalidParams(ValueError):
    """A parameter or setting is unsafe or malformed; `reasons` says each problem."""

    def __init__(self, *reasons: str) -> None:
        self.reasons = list(reasons)
        super().__init__("; ".join(reasons))


class Remediation(Protocol):
    NAME: str
    SUMMARY: str
    DISRUPTIVE: bool
    NEEDS_LEASE: bool
    PARAMS: Mapping[str, ParamSpec]
    SETTINGS: Mapping[str, ParamSpec]
    SUBJECT: ParamSpec
    EXAMPLE: Example
    __doc__: str | None

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan: ...

    def target(self, subject: str, params: Mapping[str, str]) -> str: ...

    def preconditions(
        self, subject: str, params: Mapping[str, str], ctx: ActionContext
    ) -> list[str]: ...


class UnknownAction(LookupError):
    """No module in remediations/ provides this action name."""


def module_name(action: str) -> str:
    return action.replace("-", "_")


def names() -> list[str]:
    """Every action name shipped, sorted."""
    return list(_shipped())


@functools.cache
def _shipped() -> tuple[str, ...]:
    """The package's modules, listed once (asked several times per proposal)."""
    pkg = Path(__file__).parent
    return tuple(sorted(
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules([str(pkg)])
        if not m.name.startswith("_")
    ))


def load(action: str) -> Remediation:
    """The module for `action`; UnknownAction if there is none, ImportError if it is broken."""
    if action not in names():
        raise UnknownAction(f"unknown action {action!r}; known: {', '.join(names())}")
    module: ModuleType = importlib.import_module(f"remediations.{module_name(action)}")
    return cast("Remediation", module)


def broken_modules() -> list[tuple[str, str]]:
    """(action, reason) for each shipped module that cannot be imported (a broken plugin
    is reported with the configuration's errors, never a traceback mid-incident)."""
    out = []
    for action in names():
        try:
            load(action)
        except Exception as exc:  # any error at import time: reported, locally
            out.append((action, f"cannot load: {type(exc).__name__}: {exc}"))
    return out


def resolve_params(
    remediation: Remediation, given: Mapping[str, str]
) -> tuple[Mapping[str, str], list[str]]:
    """Fill defaults and check required/unknown parameters. Returns (params, errors)."""
    errors = [f"unknown parameter {k!r}" for k in given if k not in remediation.PARAMS]
    out: dict[str, str] = {}
    for key, spec in remediation.PARAMS.items():
        if key in given:
            out[key] = given[key]
        elif spec.default is not None:
            out[key] = spec.default
        elif spec.required:
            errors.append(f"parameter {key!r} is required ({spec.description})")
    return MappingProxyType(out), errors


def value_errors(spec: ParamSpec | None, value: object) -> list[str]:
    """Why `value` is refused by `spec.check` (empty: accepted, or nothing to check)."""
    if spec is None or spec.check is None:
        return []
    try:
        spec.check(value)
    except InvalidParams as exc:
        return list(exc.reasons)
    return []


def target_of(action: str, subject: str, params: Mapping[str, str]) -> str:
    """The canonical target of `action` on `subject` (the subject when the action is not
    installed: its plan is refused anyway)."""
    try:
        return load(action).target(subject, params)
    except (UnknownAction, ImportError):
        return subject


def build_plan(
    action: str, subject: str, given: Mapping[str, str], ctx: ActionContext
) -> Plan:
    """The plan for `action` (UnknownAction, or InvalidParams with every reason)."""
    remediation = load(action)
    params, errors = resolve_params(remediation, given)
    if errors:
        raise InvalidParams(*errors)
    return remediation.plan(subject, params, ctx)
