"""The values that flow through the agent (docs/architecture.md "Data flow").

sources --Observation--> detectors --Finding--> policy --Proposal--> guards --Verdict-->
executor --Outcome.  Every value here is a frozen dataclass: stages never share mutable
state, so each stage can be tested by feeding it values built with the constructors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

EMPTY: Mapping[str, str] = MappingProxyType({})

#: syslog facility of messages the kernel itself printed (docs/architecture.md, safety property 5:
#: only these may act)
KERNEL_FACILITY = 0


# --------------------------------------------------------------------------- observations
@dataclass(frozen=True)
class LogLine:
    """One line from the kernel log (`source == "kmsg"`) or a followed file (`"log:NAME"`).

    `facility` is set for kmsg records (0 = the kernel, >= 1 = written from userspace)
    and for scanned lines whose format says it; None when the input does not tell.
    """

    source: str
    text: str
    t: float
    facility: int | None = None
    priority: int | None = None
    seq: int | None = None
    monotonic_usec: int | None = None
    fields: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    truncated: bool = False

    @property
    def from_kernel(self) -> bool:
        """True only for records the kernel itself printed: the only ones trusted to act."""
        return self.source == "kmsg" and self.facility == KERNEL_FACILITY


@dataclass(frozen=True)
class MetricSample:
    """One sample of flat, stable metric names (see docs/metrics.md) to float values.

    `unavailable` names metrics this host cannot provide (e.g. PSI on an old kernel):
    they are absent from `values`, and that is not an error.
    """

    t: float
    values: Mapping[str, float]
    unavailable: frozenset[str] = frozenset()
    #: names of tasks found in D state (uninterruptible sleep), unique and sorted
    blocked_tasks: tuple[str, ...] = ()
    #: why a name in `unavailable` is unavailable (e.g. "statvfs timed out after 2 s")
    reasons: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    #: evidence that goes with one metric, by metric name: which process drives a hot
    #: unit (`unit.provision.service.cpu_pct` -> "top process pid 812 (provision.sh), 97%
    #: of a core"); a threshold rule on that metric adds it to the finding's evidence
    details: Mapping[str, str] = field(default_factory=lambda: EMPTY)


DeviceAction = Literal["add", "remove", "change", "present"]


@dataclass(frozen=True)
class DeviceEvent:
    """A block device appeared, disappeared or changed (`present` = start-up inventory)."""

    t: float
    action: DeviceAction
    device: str
    subsystem: str = "block"
    devtype: str = ""
    model: str = ""
    serial: str = ""
    size_bytes: int | None = None


@dataclass(frozen=True)
class ProbeResult:
    """The result of one protocol probe (IMAP, POP3, SMTP, HTTP, TCP)."""

    t: float
    name: str
    ok: bool
    latency_ms: float | None
    detail: str = ""


Observation = LogLine | MetricSample | DeviceEvent | ProbeResult


# --------------------------------------------------------------------------- detection
Severity = Literal["info", "warning", "error", "critical"]


@dataclass(frozen=True)
class SignatureMatch:
    """A catalog signature matched a line. `recovery` lines clear findings, never fire."""

    signature: str
    problem: str
    subject: str
    severity: Severity
    line: LogLine
    recovery: bool = False
    groups: Mapping[str, str] = field(default_factory=lambda: EMPTY)


FindingState = Literal["firing", "resolved"]


@dataclass(frozen=True)
class Finding:
    """A problem instance keyed by (problem, subject), with its lifecycle and evidence.

    `trusted` is False when the evidence came only from sources that may not trigger an
    action (a kernel line written from userspace): such a finding is reported, never acted on.
    """

    problem: str
    subject: str
    state: FindingState
    first_seen: float
    last_seen: float
    count: int
    evidence: tuple[str, ...]
    rule: str = ""
    severity: Severity = "warning"
    trusted: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.problem, self.subject)


# --------------------------------------------------------------------------- policy & guards
@dataclass(frozen=True)
class Proposal:
    """The policy proposes one rung of a ladder for one finding."""

    action: str
    subject: str
    problem: str
    params: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    rung: int = 0
    disruptive: bool = False
    needs_lease: bool = False
    needs_approval: bool = False
    trusted: bool = True
    origin: Literal["policy", "operator"] = "policy"
    #: the subject of the finding this answers (`subject` is the action's target)
    finding_subject: str = ""
    #: why the policy proposes it, one sentence ("rung 2 of 3: restart-service did not ...")
    reason: str = ""
    #: the canonical thing acted on (remediations.target_of: "dovecot" -> "dovecot.service");
    #: cooldowns, budgets and flapping are keyed on it ("" = the subject)
    target: str = ""

    @property
    def acted_on(self) -> str:
        return self.target or self.subject


@dataclass(frozen=True)
class Budget:
    """At most `max` executions per `window_s`, counted per problem or per host (an
    action's default: remediations; the operator's: [guards.budget])."""

    max: int
    window_s: float
    per: str = "problem"  # "problem": per action and problem; "host": per action


@dataclass(frozen=True)
class Verdict:
    """One guard's answer to a proposal: allow or deny, with the reason why.

    `needs_person`: a deny that a person must hear about (flapping, a broken history or
    maintenance file, an execution that cannot be recorded): the driver pages."""

    guard: str
    allow: bool
    reason: str
    needs_person: bool = False


@dataclass(frozen=True)
class Lease:
    """A grant from the coordinator to run one disruptive action until `expires_at`.

    `granted_by` names the coordinator that granted it ("host:port"; "" for a stand-in):
    a node restart records it in its intent, so that after the boot the lease is given
    back to the coordinator that holds it, and to no other."""

    id: str
    action: str
    subject: str
    expires_at: float
    granted_by: str = ""


# --------------------------------------------------------------------------- remediation
@dataclass(frozen=True)
class Step:
    """One argv to run, never a shell string, with its timeout.

    `ok_exit` lists the exit codes that count as success for this step.
    """

    argv: tuple[str, ...]
    timeout_s: float
    description: str = ""
    ok_exit: tuple[int, ...] = (0,)
    input_text: str | None = None


@dataclass(frozen=True)
class Plan:
    """What a remediation would do: ordered steps, plus how to check it worked.

    Dry-run prints exactly this value; execute runs exactly this value.
    """

    action: str
    subject: str
    steps: tuple[Step, ...]
    verify: tuple[Step, ...] = ()
    disruptive: bool = False
    summary: str = ""

    def render(self) -> str:
        """Human-readable plan, one argv per line, as dry-run prints it."""
        import shlex

        lines = [f"plan {self.action} {self.subject}: {self.summary}".rstrip(": ")]
        for i, step in enumerate(self.steps, 1):
            lines.append(
                f"  {i}. {shlex.join(step.argv)}   (timeout {step.timeout_s:g}s)"
                + (f"  # {step.description}" if step.description else "")
            )
        for step in self.verify:
            lines.append(f"  verify: {shlex.join(step.argv)}   (timeout {step.timeout_s:g}s)")
        return "\n".join(lines)


@dataclass(frozen=True)
class StepResult:
    argv: tuple[str, ...]
    exit_code: int | None
    duration_s: float
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    ran: bool = True


@dataclass(frozen=True)
class Outcome:
    """What happened when a plan was handed to an executor.

    `executed` is False for dry-run and observe: nothing ran.
    """

    action: str
    subject: str
    ok: bool
    executed: bool
    results: tuple[StepResult, ...] = ()
    detail: str = ""
