"""Remediation actions, one module each, found by name.

`remediations/restart_service.py` is the action `restart-service`: a subclass of
`Remediation` that states its own facts once, as class attributes, and its `plan()`;
the module holds one instance, `ACTION`, and its docstring is the runbook (what it does,
when, how to verify and undo it). Docs, `--help`, the policy and the guard chain read
everything from there (docs/architecture.md, convention 6):

    NAME, SUMMARY                 # "restart-service", one line
    DISRUPTIVE, NEEDS_LEASE       # takes a service or the node away; needs a lease first
    PARAMS: Mapping[str, ParamSpec]    # rung / --param parameters, with their defaults
    SETTINGS: Mapping[str, ParamSpec]  # keys of its [actions.NAME] table, with defaults
    SUBJECT: ParamSpec            # what the subject is (its `check` refuses a literal one)
    EXAMPLE: Example              # subject, params and settings for the runbook's dry-run
    BUDGET: Budget | None         # how often it may run ([guards.budget] overrides)
    COOLDOWN_S: float | None      # before it runs again on a target ([guards.cooldown])
    plan(subject, params, ctx) -> Plan
    target(subject, params) -> str     # the canonical thing acted on (default: subject)
    preconditions(subject, params, ctx) -> list[str]   # default: what plan() refuses

What they share is inherited: `resolve()` fills PARAMS defaults and refuses unknown or
missing ones; `settings()` applies SETTINGS defaults under the configured values (the
ActionContext a plan gets has them applied, agent/pipeline/contexts.py); the default
`preconditions()` is the validation plan() applies. `plan()` is pure and gets resolved
params: the same inputs give the same Plan, which dry-run prints and execute runs. It
raises InvalidParams when a parameter or setting is unsafe or malformed. A ParamSpec's
`check` runs the validation plan() applies to that one value, so `check` refuses a bad
setting or literal rung parameter when the configuration is loaded, not mid-incident.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, ClassVar, Protocol

from agent.model import EMPTY, Budget, Lease, Plan, Step, StepResult

if TYPE_CHECKING:
    from agent.clock import Clock


#: no parameters or settings
EMPTY_SPECS: Mapping[str, ParamSpec] = MappingProxyType({})


class ReadOnlyRunner(Protocol):
    """Runs a read-only step (used by preconditions and verification)."""

    def run(self, step: Step) -> StepResult: ...


@dataclass(frozen=True)
class ParamSpec:
    """One parameter or setting: what it is, its default, and its validation."""

    description: str
    required: bool = False
    #: a parameter's default (parameters are strings, as a rung or --param gives them)
    default: str | None = None
    #: validates one value (raises InvalidParams with the reason); None: any string
    check: Callable[[object], object] | None = field(default=None, compare=False)
    #: a setting's default, as the TOML value it stands for (a list, an integer...)
    value: object = None

    @property
    def setting_default(self) -> object:
        return self.value if self.value is not None else self.default


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
    #: the coordinator's lease this execution runs under (the Decider plans with it once
    #: the lease gate has it; None in dry-run and for actions without one): node-restart
    #: records it in its intent, to give it back after the boot
    lease: Lease | None = None


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


class Remediation:
    """One action: its facts (class attributes, stated once) and its plan; what every
    action shares is here (module docstring)."""

    NAME: ClassVar[str]
    SUMMARY: ClassVar[str]
    DISRUPTIVE: ClassVar[bool] = False
    NEEDS_LEASE: ClassVar[bool] = False
    PARAMS: ClassVar[Mapping[str, ParamSpec]] = EMPTY_SPECS
    SETTINGS: ClassVar[Mapping[str, ParamSpec]] = EMPTY_SPECS
    SUBJECT: ClassVar[ParamSpec]
    EXAMPLE: ClassVar[Example]
    #: at most so many runs per window by default (None: no budget)
    BUDGET: ClassVar[Budget | None] = None
    #: seconds before it runs again on the same target (None: [guards.cooldown] default_s)
    COOLDOWN_S: ClassVar[float | None] = None

    @property
    def runbook(self) -> str:
        """The module's docstring: what it does, when, how to verify and undo it."""
        return sys.modules[type(self).__module__].__doc__ or ""

    def plan(self, subject: str, params: Mapping[str, str], ctx: ActionContext) -> Plan:
        """The steps for `subject`, with resolved `params` (InvalidParams: refused)."""
        raise NotImplementedError

    def target(self, subject: str, params: Mapping[str, str]) -> str:
        """The canonical thing acted on: cooldowns, budgets and flapping are keyed on it."""
        return subject.strip()

    def preconditions(
        self, subject: str, params: Mapping[str, str], ctx: ActionContext
    ) -> list[str]:
        """Why it must not run now (empty: it may); may run read-only commands through
        ctx.runner, never a destructive one. Here: the reasons plan() refuses (given as
        a rung or the operator gives them: defaults are filled in first)."""
        resolved, errors = self.resolve(params)
        if errors:
            return errors
        try:
            self.plan(subject, resolved, self.with_settings(ctx))
        except InvalidParams as exc:
            return list(exc.reasons)
        return []

    def resolve(self, given: Mapping[str, str]) -> tuple[Mapping[str, str], list[str]]:
        """PARAMS defaults filled in; unknown and missing required ones are errors."""
        errors = [f"unknown parameter {k!r} (known: {', '.join(self.PARAMS) or 'none'})"
                  for k in given if k not in self.PARAMS]
        out: dict[str, str] = {}
        for key, spec in self.PARAMS.items():
            if key in given:
                out[key] = given[key]
            elif spec.default is not None:
                out[key] = spec.default
            elif spec.required:
                errors.append(f"parameter {key!r} is required ({spec.description})")
        return MappingProxyType(out), errors

    def with_settings(self, ctx: ActionContext) -> ActionContext:
        """`ctx` with this action's settings defaults applied (idempotent)."""
        return dataclasses.replace(ctx, settings=self.settings(ctx.settings))

    def settings(self, configured: Mapping[str, object]) -> Mapping[str, object]:
        """The `[actions.NAME]` values over the SETTINGS defaults (the one place they
        are applied)."""
        out: dict[str, object] = {k: spec.setting_default for k, spec in self.SETTINGS.items()
                                  if spec.setting_default is not None}
        out.update(configured)
        return MappingProxyType(out)


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
    """The action `action`; UnknownAction if no module provides it, ImportError if its
    module is broken (or holds no `ACTION`)."""
    if action not in names():
        raise UnknownAction(f"unknown action {action!r}; known: {', '.join(names())}")
    module: ModuleType = importlib.import_module(f"remediations.{module_name(action)}")
    instance = getattr(module, "ACTION", None)
    if not isinstance(instance, Remediation):  # a broken module, as callers expect
        raise ImportError(  # noqa: TRY004
            f"remediations/{module_name(action)}.py holds no ACTION")
    return instance


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
    params, errors = remediation.resolve(given)
    if errors:
        raise InvalidParams(*errors)
    return remediation.plan(subject, params, remediation.with_settings(ctx))
