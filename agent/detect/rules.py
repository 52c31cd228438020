"""Detection rules as data: what turns observations into findings.

Each rule is a `[rules.NAME]` table with `kind = ...`; built-in defaults per role ship in
agent/detect/rules.d/*.toml (see docs/policy.md). A user table of the same name replaces
the default whole; `enabled = false` removes it. Kinds:

threshold   metric OP level, held for `for_s`; resolves when `metric OP clear` (the clear
            level, default = level) has been false for `clear_for_s`. `metric` may hold
            up to three `*` (`disk.*.await_ms`, `tcp_synrecv.*.*`): each matching metric
            is watched on its own; each `*` matches as little as it can, so in
            `tcp_synrecv.*.*` the first is the port and the second the whole address.
            subject template: {match} (what the `*`s matched, from the first to the
            last), {match1} {match2} {match3} (what each `*` matched), {metric}, {blocked_task}
            (the first D-state task of the sample), {top_task} (the sample's
            `top_tasks[0]` when the sampler provides it), default "host".
            Evidence: each value, plus the sample's `details[metric]` when the sampler
            gives one (`unit.*.cpu_pct`: the unit's busiest PID and command).
signature   `count` matches within `window_s`, per subject, of signatures whose id
            matches `signatures` and problem matches `problems` (globs) from `sources`
            (globs: kmsg, log:mail...). `problem` defaults to the matched problem.
            A recovery match resolves the finding for its subject; so does `quiet_s`
            without a match. subject template: {subject}, {signature}, {problem} and the
            signature's named groups; default "{subject}".
probe       `failures` consecutive failures, or latency above `latency_ms` for `for_s`;
            resolves after `recover` good results. subject default "{probe}".
device      a device whose name matches `devices` (globs) is removed; resolves when it
            comes back. subject "{device}".
all_of      every rule in `of` has a firing finding ("RULE" or "RULE:PROBLEM" to pick one
            problem of a signature rule); subject taken from the `subject_from` rule
            (default the first). Trusted only if every part is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from agent.detect.template import placeholders
from agent.model import Severity
from agent.schema import ConfigError, Section, role_tables

#: the shipped defaults, one file per role (agent.schema.role_tables)
SHIPPED_RULES = Path(__file__).parent / "rules.d"
RULE_KINDS = ("threshold", "signature", "probe", "device", "all_of")
OPS = (">", ">=", "<", "<=")
#: wildcards in a threshold rule's metric ({match1}..{match3} in its subject)
MAX_METRIC_STARS = 3
SEVERITIES: tuple[str, ...] = get_args(Severity)
Op = Literal[">", ">=", "<", "<="]


def compare(op: str, value: float, level: float) -> bool:
    if op == ">":
        return value > level
    if op == ">=":
        return value >= level
    if op == "<":
        return value < level
    return value <= level


@dataclass(frozen=True)
class ThresholdRule:
    name: str
    metric: str
    op: str
    level: float
    for_s: float = 0.0
    clear: float | None = None
    clear_for_s: float = 0.0
    problem: str = ""
    subject: str = "host"
    severity: Severity = "warning"

    @property
    def clear_level(self) -> float:
        return self.level if self.clear is None else self.clear


@dataclass(frozen=True)
class SignatureRule:
    name: str
    signatures: tuple[str, ...] = ("*",)
    problems: tuple[str, ...] = ("*",)
    sources: tuple[str, ...] = ("*",)
    count: int = 1
    window_s: float = 60.0
    quiet_s: float = 600.0
    problem: str | None = None
    subject: str = "{subject}"
    severity: Severity | None = None


@dataclass(frozen=True)
class ProbeRule:
    name: str
    probes: tuple[str, ...] = ("*",)
    failures: int = 3
    latency_ms: float | None = None
    for_s: float = 0.0
    recover: int = 1
    problem: str = ""
    subject: str = "{probe}"
    severity: Severity = "error"


@dataclass(frozen=True)
class DeviceRule:
    name: str
    devices: tuple[str, ...] = ()
    problem: str = ""
    subject: str = "{device}"
    severity: Severity = "error"


@dataclass(frozen=True)
class AllOfRule:
    name: str
    of: tuple[str, ...] = ()
    subject_from: str = ""
    problem: str = ""
    severity: Severity = "error"

    def parts(self) -> list[tuple[str, str | None]]:
        """(rule name, problem filter or None) for each part of `of`."""
        out: list[tuple[str, str | None]] = []
        for ref in self.of:
            rule, _, problem = ref.partition(":")
            out.append((rule, problem or None))
        return out


Rule = ThresholdRule | SignatureRule | ProbeRule | DeviceRule | AllOfRule


# --------------------------------------------------------------------------- parsing
_SUBJECT_NAMES: dict[str, frozenset[str] | None] = {
    "threshold": frozenset({"match", "match1", "match2", "match3", "metric",
                            "blocked_task", "top_task"}),
    "signature": None,  # named groups are open-ended
    "probe": frozenset({"probe"}),
    "device": frozenset({"device"}),
}


def _subject(s: Section, kind: str, default: str) -> str:
    template = s.text("subject", default)
    try:
        names = placeholders(template)
    except ValueError as exc:
        s.error("subject", str(exc))
        return default
    allowed = _SUBJECT_NAMES.get(kind)
    for n in names:
        if allowed is not None and n not in allowed:
            s.error("subject", f"unknown placeholder {{{n}}}; known: "
                    + ", ".join(f"{{{a}}}" for a in sorted(allowed)))
    return template


def _severity(s: Section, default: Severity) -> Severity:
    return s.choice("severity", SEVERITIES, default)  # type: ignore[return-value]


def _threshold(name: str, s: Section) -> Rule:
    metric = s.text("metric", "")
    if metric.count("*") > MAX_METRIC_STARS:
        s.error("metric", f"may hold at most {MAX_METRIC_STARS} '*'")
    for required in ("metric", "level"):
        if not s.has(required):
            s.error(required, "is required")
    op = s.choice("op", OPS, ">")
    level = s.number("level", 0.0)
    rule = ThresholdRule(
        name=name, metric=metric, op=op, level=level,
        for_s=s.number("for_s", 0.0, minimum=0.0),
        clear=s.number("clear", level) if s.has("clear") else None,
        clear_for_s=s.number("clear_for_s", 0.0, minimum=0.0),
        problem=s.text("problem", name),
        subject=_subject(s, "threshold", "{match}" if "*" in metric else "host"),
        severity=_severity(s, "warning"),
    )
    if rule.clear is not None and op in (">", ">=") and rule.clear > level:
        s.error("clear", f"must not be above level {level:g} for op {op!r}")
    if rule.clear is not None and op in ("<", "<=") and rule.clear < level:
        s.error("clear", f"must not be below level {level:g} for op {op!r}")
    return rule


def _signature(name: str, s: Section) -> Rule:
    sev = s.opt_str("severity")
    if sev is not None and sev not in SEVERITIES:
        s.error("severity", f"must be one of {', '.join(SEVERITIES)}, not {sev!r}")
        sev = None
    rule = SignatureRule(
        name=name,
        signatures=s.str_list("signatures", ("*",)),
        problems=s.str_list("problems", ("*",)),
        sources=s.str_list("sources", ("*",)),
        count=s.integer("count", 1, minimum=1),
        window_s=s.number("window_s", 60.0, minimum=0.0),
        quiet_s=s.number("quiet_s", 600.0, minimum=1.0),
        problem=s.opt_str("problem"),
        subject=_subject(s, "signature", "{subject}"),
        severity=sev,  # type: ignore[arg-type]
    )
    if rule.signatures == ("*",) and rule.problems == ("*",) and not s.has("sources"):
        s.error("problems", "a signature rule must name signatures, problems or sources")
    return rule


def _probe(name: str, s: Section) -> Rule:
    latency = s.number("latency_ms", 0.0, minimum=0.0) if s.has("latency_ms") else None
    rule = ProbeRule(
        name=name,
        probes=s.str_list("probes", ("*",)),
        failures=s.integer("failures", 3, minimum=0),
        latency_ms=latency,
        for_s=s.number("for_s", 0.0, minimum=0.0),
        recover=s.integer("recover", 1, minimum=1),
        problem=s.text("problem", name),
        subject=_subject(s, "probe", "{probe}"),
        severity=_severity(s, "error"),
    )
    if rule.failures == 0 and rule.latency_ms is None:
        s.error("failures", "a probe rule needs failures >= 1 or latency_ms")
    return rule


def _device(name: str, s: Section) -> Rule:
    rule = DeviceRule(
        name=name,
        devices=s.str_list("devices", ()),
        problem=s.text("problem", name),
        subject=_subject(s, "device", "{device}"),
        severity=_severity(s, "error"),
    )
    if not rule.devices:
        s.error("devices", "is required: the disks or array members to watch (globs)")
    return rule


def _all_of(name: str, s: Section) -> Rule:
    of = s.str_list("of", ())
    if len(of) < 2:
        s.error("of", "needs at least two rules")
    return AllOfRule(
        name=name, of=of,
        subject_from=s.text("subject_from", of[0] if of else ""),
        problem=s.text("problem", name),
        severity=_severity(s, "error"),
    )


#: each rule kind's parser: its keys, their defaults and checks
_PARSERS = {"threshold": _threshold, "signature": _signature, "probe": _probe,
            "device": _device, "all_of": _all_of}


def parse_rule(name: str, s: Section) -> Rule | None:
    """One `[rules.NAME]` table; None (with errors recorded) when it cannot be built."""
    kind = s.choice("kind", RULE_KINDS, "")
    s.flag("enabled", True)  # read by parse_rules; marked seen here
    parser = _PARSERS.get(kind)
    rule = parser(name, s) if parser is not None else None
    s.finish()
    return rule


@dataclass(frozen=True)
class _Parsed:
    rule: Rule
    file: str
    key: str


def _parse_tables(top: Section) -> tuple[dict[str, _Parsed], set[str]]:
    rules: dict[str, _Parsed] = {}
    disabled: set[str] = set()
    if not top.has("rules"):
        return rules, disabled
    for name, sub in top.tables("rules"):
        enabled = sub.raw.get("enabled", True)
        rule = parse_rule(name, sub)
        if enabled is False:
            disabled.add(name)
        elif rule is not None:
            rules[name] = _Parsed(rule, sub.file, sub.path)
    return rules, disabled


def parse_rules(top: Section, role: str) -> tuple[Rule, ...]:
    """The effective rules: the role's shipped defaults (agent/detect/rules.d/), then the
    user's `[rules.*]`. Errors (in the user's file or, if ever, in a shipped file) go to
    `top.errors`, with file, key and reason.
    """
    merged: dict[str, _Parsed] = {}
    for file, raw in role_tables(SHIPPED_RULES, role):
        shipped = Section({"rules": raw.get("rules", {})}, file, "", top.errors)
        found, disabled = _parse_tables(shipped)
        merged.update(found)
        for name in disabled:
            merged.pop(name, None)
    found, disabled = _parse_tables(top)
    merged.update(found)
    for name in disabled:
        merged.pop(name, None)
    _check_refs(merged, top.errors, ConfigError)
    return tuple(p.rule for p in merged.values())


def _check_refs(
    merged: dict[str, _Parsed], errors: list[ConfigError], error: type[ConfigError]
) -> None:
    for p in merged.values():
        if not isinstance(p.rule, AllOfRule):
            continue
        for rule_name, _problem in p.rule.parts():
            target = merged.get(rule_name)
            if target is None:
                errors.append(error(p.file, f"{p.key}.of",
                                    f"names rule {rule_name!r}, which is not defined or disabled"))
            elif isinstance(target.rule, AllOfRule):
                errors.append(error(p.file, f"{p.key}.of",
                                    f"names all_of rule {rule_name!r}; nest by listing its parts"))
        refs = set(p.rule.of) | {r for r, _ in p.rule.parts()}
        if p.rule.subject_from and p.rule.subject_from not in refs:
            errors.append(error(p.file, f"{p.key}.subject_from",
                                f"{p.rule.subject_from!r} is not one of the rules in `of`"))


def by_name(rules: Sequence[Rule]) -> dict[str, Rule]:
    return {r.name: r for r in rules}
