"""The detectors: rules (agent/detect/rules.py) applied to observations → Finding changes.

    det = Detectors(config.rules)
    changes = det.on_match(m)      # SignatureMatch from the catalog matcher
    changes = det.on_metrics(s)    # MetricSample
    changes = det.on_probe(r)      # ProbeResult
    changes = det.on_device(e)     # DeviceEvent
    changes = det.tick(now)        # time-based resolution (signature quiet periods)
    det.actionable()               # every firing trusted Finding (what the policy sees)
    det.active()                   # ... and the untrusted ones (status, reports)

Each `on_*`/`tick` returns the *changes* it caused, as Finding values: `state ==
"firing"` for a finding that started firing (or became trusted), `state == "resolved"`
for one that ended. Updates to a firing finding (count, last_seen, evidence) are not
changes; `active()` shows them. Pure: no I/O; time comes from the observations' `t` and
from `tick(now)` (the same clock the sources stamp with).

Trust (docs/architecture.md safety property 5): evidence counts as trusted when it came from the
kernel itself (LogLine.from_kernel), a followed log file (source `log:NAME`), a metric, a
probe or a udev event. A kmsg line with a facility other than 0 was written from
userspace. Untrusted matches never touch the trusted findings: they go to a detector of
their own (`untrusted`, signature rules only) whose findings all have `trusted=False` and
are reported, never acted on. So a forged line changes no plan: not its count, not its
first-seen time, not its subject; a forged line first and the real one next, the real
one is answered as if the forged one had never been. `trusted_active()` is what the
policy sees; `active()` adds the untrusted findings for status and reports.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from agent.detect.live import (
    EVIDENCE_LIMIT,
    Live,
    ProbeState,
    SignatureWindow,
    ThresholdState,
    first_task,
    globs,
    match_values,
    metric_pattern,
    trusted_line,
)
from agent.detect.rules import (
    AllOfRule,
    DeviceRule,
    ProbeRule,
    Rule,
    SignatureRule,
    ThresholdRule,
    compare,
)
from agent.detect.template import render
from agent.model import (
    DeviceEvent,
    Finding,
    MetricSample,
    ProbeResult,
    Severity,
    SignatureMatch,
)


class Detectors:
    """Every rule's state; feed it observations, get Finding changes back."""

    def __init__(self, rules: Sequence[Rule], *, evidence_limit: int = EVIDENCE_LIMIT,
                 trusted: bool = True) -> None:
        self.rules = tuple(rules)
        self.evidence_limit = evidence_limit
        self.trusted = trusted
        #: where matches of lines written from userspace go (signature rules only)
        self.untrusted: Detectors | None = None
        if trusted:
            self.untrusted = Detectors(
                [r for r in self.rules if isinstance(r, SignatureRule)],
                evidence_limit=evidence_limit, trusted=False)
        self._threshold = [r for r in self.rules if isinstance(r, ThresholdRule)]
        # A literal metric is a dict lookup; only wildcard metrics ("unit.*.cpu_pct") scan
        # the sample's names (this runs every second on the hot path).
        self._literal = [r for r in self._threshold if "*" not in r.metric]
        self._wildcard = [(r, metric_pattern(r.metric)) for r in self._threshold
                          if "*" in r.metric]
        self._signature = [r for r in self.rules if isinstance(r, SignatureRule)]
        self._probe = [r for r in self.rules if isinstance(r, ProbeRule)]
        self._device = [r for r in self.rules if isinstance(r, DeviceRule)]
        self._all_of = [r for r in self.rules if isinstance(r, AllOfRule)]
        self._th: dict[tuple[str, str], ThresholdState] = {}
        self._sig: dict[tuple[str, str, str], SignatureWindow] = {}
        self._pr: dict[tuple[str, str], ProbeState] = {}
        self._dev: dict[tuple[str, str], Live] = {}
        self._all: dict[str, Live] = {}

    # ------------------------------------------------------------------ helpers
    def _new_live(self, rule: str, problem: str, subject: str, severity: Severity,
                  t: float) -> Live:
        return Live(rule, problem, subject, severity, t, t, trusted=self.trusted,
                     evidence=deque(maxlen=self.evidence_limit))

    def _firing_by_rule(self) -> dict[str, list[Live]]:
        out: dict[str, list[Live]] = {}
        lives: list[Live | None] = [s.live for s in self._th.values()]
        lives += [w.live for w in self._sig.values()]
        lives += [p.live for p in self._pr.values()]
        lives += list(self._dev.values())
        lives += list(self._all.values())
        for live in lives:
            if live is not None:
                out.setdefault(live.rule, []).append(live)
        return out

    def any_firing(self) -> bool:
        """True when any trusted finding is firing (no snapshots built: the idle check;
        untrusted findings never lead to a proposal)."""
        return (
            any(s.live is not None for s in self._th.values())
            or any(w.live is not None for w in self._sig.values())
            or any(p.live is not None for p in self._pr.values())
            or bool(self._dev) or bool(self._all)
        )

    def _own(self) -> list[Finding]:
        lives = [x for group in self._firing_by_rule().values() for x in group]
        return sorted((x.snapshot() for x in lives), key=lambda f: (f.problem, f.subject))

    def actionable(self) -> list[Finding]:
        """Every firing trusted finding, sorted by (problem, subject): what may act."""
        return self._own() if self.trusted else []

    def active(self) -> list[Finding]:
        """Every firing finding, trusted or not, sorted by (problem, subject, trusted)."""
        found = self._own()
        if self.untrusted is not None:
            found += self.untrusted._own()
        return sorted(found, key=lambda f: (f.problem, f.subject, not f.trusted))

    # ------------------------------------------------------------------ thresholds
    def on_metrics(self, sample: MetricSample) -> list[Finding]:
        changes: list[Finding] = []
        values = sample.values
        for rule in self._literal:
            value = values.get(rule.metric)
            if value is not None:
                changes += self._threshold_step(rule, rule.metric, None, float(value),
                                                sample)
        for rule, pattern in self._wildcard:
            for metric, value in values.items():
                m = pattern.match(metric)
                if m is not None:
                    changes += self._threshold_step(rule, metric, m, float(value), sample)
        return changes + self._eval_all_of(sample.t)

    def _threshold_step(self, rule: ThresholdRule, metric: str, match: re.Match[str] | None,
                        value: float, sample: MetricSample) -> list[Finding]:
        st = self._th.setdefault((rule.name, metric), ThresholdState())
        t = sample.t
        text = f"{metric}={value:g} at {t:.0f} ({rule.op} {rule.level:g})"
        detail = sample.details.get(metric)
        if detail:
            text += f"; {detail}"
        if st.live is None:
            if not compare(rule.op, value, rule.level):
                st.pending_since = None
                return []
            if st.pending_since is None:
                st.pending_since = t
            if t - st.pending_since < rule.for_s:
                return []
            subject = render(rule.subject, {
                **match_values(metric, match), "metric": metric,
                "blocked_task": first_task(sample, "blocked_tasks"),
                "top_task": first_task(sample, "top_tasks"),
            })
            live = self._new_live(rule.name, rule.problem or rule.name, subject, rule.severity,
                                  st.pending_since)
            live.last_seen, live.count = t, 1
            live.evidence.append(text)
            st.live, st.clear_since = live, None
            return [live.snapshot()]
        live = st.live
        if compare(rule.op, value, rule.clear_level):
            st.clear_since = None
            live.last_seen = t
            live.count += 1
            live.evidence.append(text)
            return []
        if st.clear_since is None:
            st.clear_since = t
        if t - st.clear_since < rule.clear_for_s:
            return []
        live.evidence.append(f"{metric}={value:g} at {t:.0f} (cleared: not {rule.op} "
                             f"{rule.clear_level:g})")
        st.live, st.pending_since, st.clear_since = None, None, None
        return [replace(live.snapshot("resolved"), last_seen=t)]

    # ------------------------------------------------------------------ signatures
    def on_match(self, m: SignatureMatch) -> list[Finding]:
        if self.untrusted is not None and not trusted_line(m.line):
            return self.untrusted.on_match(m)
        changes: list[Finding] = []
        for rule in self._signature:
            if not (globs(rule.signatures, m.signature) and globs(rule.problems, m.problem)
                    and globs(rule.sources, m.line.source)):
                continue
            problem = rule.problem or m.problem
            values = {**m.groups, "subject": m.subject, "signature": m.signature,
                      "problem": m.problem}
            subject = render(rule.subject, values)
            key = (rule.name, problem, subject)
            if m.recovery:
                w = self._sig.get(key)
                if w is not None and w.live is not None:
                    w.live.evidence.append(f"recovered: {m.line.text[:300]}")
                    w.live.last_seen = m.line.t
                    changes.append(w.live.snapshot("resolved"))
                    del self._sig[key]
                elif w is not None:
                    del self._sig[key]
                continue
            changes += self._signature_step(rule, key, m)
        return changes + self._eval_all_of(m.line.t)

    def _signature_step(self, rule: SignatureRule, key: tuple[str, str, str],
                        m: SignatureMatch) -> list[Finding]:
        t = m.line.t
        w = self._sig.setdefault(key, SignatureWindow())
        w.last_match = t
        w.times.append(t)
        while w.times and w.times[0] < t - rule.window_s:
            w.times.popleft()
        text = m.line.text[:300] + ("" if self.trusted
                                    else "  [written from userspace: untrusted]")
        if w.live is not None:
            live = w.live
            live.count += 1
            live.last_seen = t
            live.evidence.append(text)
            return []
        if len(w.times) < rule.count:
            return []
        live = self._new_live(rule.name, key[1], key[2], rule.severity or m.severity,
                              w.times[0])
        live.count, live.last_seen = len(w.times), t
        live.evidence.append(text)
        w.live = live
        return [live.snapshot()]

    # ------------------------------------------------------------------ probes
    def on_probe(self, r: ProbeResult) -> list[Finding]:
        changes: list[Finding] = []
        for rule in self._probe:
            if not globs(rule.probes, r.name):
                continue
            st = self._pr.setdefault((rule.name, r.name), ProbeState())
            slow = (rule.latency_ms is not None and r.ok and r.latency_ms is not None
                    and r.latency_ms > rule.latency_ms)
            if r.ok and not slow:
                st.failures, st.slow_since = 0, None
                st.good += 1
                if st.live is not None and st.good >= rule.recover:
                    st.live.last_seen = r.t
                    st.live.evidence.append(f"probe {r.name} ok at {r.t:.0f}")
                    changes.append(st.live.snapshot("resolved"))
                    st.live = None
                continue
            st.good = 0
            if r.ok:
                st.failures = 0
                if st.slow_since is None:
                    st.slow_since = r.t
                due = r.t - st.slow_since >= rule.for_s
                text = f"probe {r.name} slow: {r.latency_ms:g} ms > {rule.latency_ms:g} ms"
            else:
                st.failures += 1
                st.slow_since = None
                due = rule.failures > 0 and st.failures >= rule.failures
                text = f"probe {r.name} failed ({st.failures} in a row): {r.detail}"[:300]
            if st.live is not None:
                st.live.count += 1
                st.live.last_seen = r.t
                st.live.evidence.append(text)
            elif due:
                subject = render(rule.subject, {"probe": r.name})
                st.live = self._new_live(rule.name, rule.problem or rule.name, subject,
                                         rule.severity, r.t)
                st.live.count = 1
                st.live.evidence.append(text)
                changes.append(st.live.snapshot())
        return changes + self._eval_all_of(r.t)

    # ------------------------------------------------------------------ devices
    def on_device(self, e: DeviceEvent) -> list[Finding]:
        changes: list[Finding] = []
        if e.devtype == "partition":
            return changes
        for rule in self._device:
            if not globs(rule.devices, e.device):
                continue
            key = (rule.name, e.device)
            live = self._dev.get(key)
            desc = " ".join(x for x in (e.model, e.serial) if x)
            if e.action == "remove" and live is None:
                subject = render(rule.subject, {"device": e.device})
                live = self._new_live(rule.name, rule.problem or rule.name, subject,
                                      rule.severity, e.t)
                live.count = 1
                live.evidence.append(f"{e.device} removed at {e.t:.0f} {desc}".rstrip())
                self._dev[key] = live
                changes.append(live.snapshot())
            elif e.action in ("add", "present") and live is not None:
                live.last_seen = e.t
                live.evidence.append(f"{e.device} back at {e.t:.0f} {desc}".rstrip())
                changes.append(live.snapshot("resolved"))
                del self._dev[key]
        return changes + self._eval_all_of(e.t)

    # ------------------------------------------------------------------ time
    def tick(self, now: float) -> list[Finding]:
        """Resolve signature findings quiet for their rule's `quiet_s`; forget old windows."""
        changes: list[Finding] = [] if self.untrusted is None else self.untrusted.tick(now)
        quiet = {r.name: r for r in self._signature}
        for key, w in list(self._sig.items()):
            rule = quiet[key[0]]
            idle = now - w.last_match
            if w.live is None:
                if idle >= rule.window_s:  # a pending window whose matches all expired
                    del self._sig[key]
            elif idle >= rule.quiet_s:
                w.live.evidence.append(f"quiet for {idle:.0f}s")
                changes.append(replace(w.live.snapshot("resolved"), last_seen=now))
                del self._sig[key]
        return changes + self._eval_all_of(now)

    def end(self, problem: str, subject: str, why: str, now: float) -> list[Finding]:
        """Resolve a firing signature finding now (its episode was verified fixed: an
        event-shaped problem did not occur again); the next occurrence fires anew."""
        changes: list[Finding] = []
        for key, w in list(self._sig.items()):
            if key[1] == problem and key[2] == subject and w.live is not None:
                w.live.evidence.append(why[:300])
                changes.append(replace(w.live.snapshot("resolved"), last_seen=now))
                del self._sig[key]
        return changes + self._eval_all_of(now)

    # ------------------------------------------------------------------ combinations
    def _eval_all_of(self, t: float) -> list[Finding]:
        if not self._all_of:
            return []
        firing = self._firing_by_rule()
        changes: list[Finding] = []
        for rule in self._all_of:
            parts: list[list[Live]] = []
            for name, problem in rule.parts():
                got = [x for x in firing.get(name, []) if problem is None or x.problem == problem]
                parts.append(got)
            live = self._all.get(rule.name)
            if all(parts):
                if live is not None:
                    live.last_seen = t
                    continue
                source = dict(zip(rule.of, parts, strict=True))
                for (name, _), p in zip(rule.parts(), parts, strict=True):
                    source.setdefault(name, p)
                lead = source.get(rule.subject_from) or parts[0]
                subject = sorted(lead, key=lambda x: (x.first_seen, x.subject))[0].subject
                live = self._new_live(rule.name, rule.problem or rule.name, subject,
                                      rule.severity, max(x.first_seen for p in parts for x in p))
                live.last_seen, live.count = t, 1
                for name, p in zip(rule.of, parts, strict=True):
                    newest = max(p, key=lambda x: x.last_seen)
                    ev = newest.evidence[-1] if newest.evidence else ""
                    live.evidence.append(f"{name}: {newest.subject}: {ev}"[:300])
                self._all[rule.name] = live
                changes.append(live.snapshot())
            elif live is not None:
                gone = [n for n, p in zip(rule.of, parts, strict=True) if not p]
                live.last_seen = t
                live.evidence.append(f"cleared: {', '.join(gone)} no longer firing")
                changes.append(live.snapshot("resolved"))
                del self._all[rule.name]
        return changes
