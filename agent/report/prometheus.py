"""The agent's own state for node_exporter's textfile collector (docs/deploy.md "Metrics").

`[metrics] textfile` names the file (docs/configuration.md). What is in it: the findings
firing by problem and severity, plan outcomes by action and outcome, guard denials by
guard, the reporter's spool depth and last ack, the last decision cycle's time and
duration, the mode and the start time. `AgentState` is that state as a value; `families()`
turns it into metric families (agent/report/exposition.py renders them); `write_textfile`
puts the text in place atomically, readable by node_exporter's own user.

Only fixed vocabularies become label values: problem names the loaded rules and catalog
define, the shipped action names, the guards' names, severities, outcomes and modes. A
value outside its vocabulary is counted as `other`. A finding's subject, a reason, a
line's text never label anything: they are others' text (docs/architecture.md,
convention 13), and the number of series stays bounded whatever the logs say.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, get_args

from agent.model import Severity
from agent.report.exposition import Family, Sample
from agent.schema import MODES, Section

#: the label value of anything outside its vocabulary
OTHER = "other"
#: every guard's name: the chain's (agent/guards/), and the Decider's `plan` and `budget`
GUARDS = ("mode", "trust", "maintenance", "cooldown", "budget", "flapping", "fold",
          "approval", "preconditions", "lease", "plan")
SEVERITIES: tuple[str, ...] = get_args(Severity)
#: an outcome event as a label: ran and succeeded, ran and failed, recorded in dry-run
#: (nothing ran), or never handed to a runner (the worker full, the same plan running)
OUTCOMES = ("ok", "failed", "dry-run", "not-run")
TEXTFILE_SUFFIX = ".prom"

K = TypeVar("K", bound=tuple[str, ...])


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TextfileSettings:
    """`metrics.textfile` ("" = not written) and `metrics.textfile_interval_s`."""

    path: Path | None = None
    interval_s: float = 15.0


def parse_textfile(s: Section) -> TextfileSettings:
    """The textfile keys of `[metrics]`; the caller's parser of the same table finishes it
    (unknown keys are reported once, by whichever parser reads the table last)."""
    d = TextfileSettings()
    text = s.text("textfile", "")
    interval = s.number("textfile_interval_s", d.interval_s, minimum=1.0, maximum=3600.0)
    if not text:
        return TextfileSettings(None, interval)
    if not text.startswith("/") or "\0" in text:
        s.error("textfile", f"must be an absolute path, not {text[:200]!r}")
        return TextfileSettings(None, interval)
    if not text.endswith(TEXTFILE_SUFFIX) or text.endswith("/" + TEXTFILE_SUFFIX):
        s.error("textfile", f"must name a *{TEXTFILE_SUFFIX} file (node_exporter's textfile "
                            f"collector reads no other), not {text[:200]!r}")
        return TextfileSettings(None, interval)
    return TextfileSettings(Path(text), interval)


# --------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class Vocabulary:
    """The values each label may take; anything else is `other`."""

    problems: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()

    def problem(self, name: str) -> str:
        return name if name in self.problems else OTHER

    def action(self, name: str) -> str:
        return name if name in self.actions else OTHER


def severity_label(severity: object) -> str:
    return severity if isinstance(severity, str) and severity in SEVERITIES else OTHER


def guard_label(guard: object) -> str:
    return guard if isinstance(guard, str) and guard in GUARDS else OTHER


def outcome_label(ok: object, executed: object) -> str:
    """An outcome event's `ok` and `executed` as one of OUTCOMES."""
    if executed is True:
        return "ok" if ok is True else "failed"
    return "dry-run" if ok is True else "not-run"


# --------------------------------------------------------------------------- the state
@dataclass(frozen=True)
class ReporterView:
    """What the textfile shows of the reporter (`[coordinator]`)."""

    connected: bool
    spool_depth: int
    last_ack: float | None


@dataclass(frozen=True)
class AgentState:
    """The agent's state as the textfile shows it; every key is already a label value.

    Counters count since the agent started (a restart starts them over, as Prometheus's
    `rate()` and `increase()` expect); `firing` holds every (problem, severity) that fired
    since the start, 0 once resolved, so a series ends at 0 instead of vanishing."""

    mode: str
    started: float
    firing: Mapping[tuple[str, str], int] = field(default_factory=dict)
    actions: Mapping[tuple[str, str], int] = field(default_factory=dict)
    denials: Mapping[str, int] = field(default_factory=dict)
    #: wall-clock end and duration of the last decision cycle (None: none yet)
    last_cycle: float | None = None
    last_cycle_duration_s: float | None = None
    #: None: no `[coordinator]`, so no reporter metrics
    reporter: ReporterView | None = None


def _samples(counts: Mapping[K, int], names: tuple[str, ...]) -> tuple[Sample, ...]:
    return tuple(Sample(tuple(zip(names, key, strict=True)), float(n))
                 for key, n in sorted(counts.items()))


def _gauge(name: str, text: str, value: float | None) -> Family:
    samples = () if value is None else (Sample((), float(value)),)
    return Family(name, "gauge", text, samples)


def families(state: AgentState) -> list[Family]:
    """The metric families of `state`, in a fixed order (docs/deploy.md lists them)."""
    out = [
        Family("nodewarden_findings_firing", "gauge",
               "Findings firing now, by problem and severity.",
               _samples(state.firing, ("problem", "severity"))),
        Family("nodewarden_actions_total", "counter",
               "Remediation plans that came back from the executor since the agent "
               "started, by action and outcome (ok, failed, dry-run, not-run).",
               _samples(state.actions, ("action", "outcome"))),
        Family("nodewarden_guard_denials_total", "counter",
               "Guard verdicts that denied a proposal since the agent started, by guard.",
               _samples({(g,): n for g, n in state.denials.items()}, ("guard",))),
        _gauge("nodewarden_last_cycle_timestamp_seconds",
               "When the last decision cycle ended (seconds since the epoch).",
               state.last_cycle),
        _gauge("nodewarden_last_cycle_duration_seconds",
               "How long the last decision cycle took.", state.last_cycle_duration_s),
        Family("nodewarden_mode", "gauge", "The agent's mode (agent.mode): 1 for the one "
               "it runs in.", tuple(Sample((("mode", m),), float(m == state.mode))
                                    for m in MODES)),
        _gauge("nodewarden_start_time_seconds",
               "When the agent started (seconds since the epoch).", state.started),
    ]
    r = state.reporter
    if r is not None:
        out += [
            _gauge("nodewarden_reporter_connected",
                   "1 while the reporter has a session with the coordinator.",
                   float(r.connected)),
            _gauge("nodewarden_reporter_spool_depth",
                   "Messages in the spool waiting for the coordinator's answer.",
                   r.spool_depth),
            _gauge("nodewarden_reporter_last_ack_timestamp_seconds",
                   "When the coordinator last answered a message (seconds since the "
                   "epoch; absent until it first does).", r.last_ack),
        ]
    return out


# --------------------------------------------------------------------------- the file
def _open_dir(path: Path) -> int:
    """The directory `path` is in, opened without following a symlink at its last
    component: the collector's directory is often its own user's (Debian's is
    `prometheus`'s, in a parent that user also owns), and a root agent must not be sent
    to write or remove `*.prom` files in a directory that user links it to. Every step
    below works relative to this descriptor, so a directory swapped mid-write changes
    nothing either. Raises OSError (ELOOP for a symlink)."""
    return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def write_textfile(path: Path, text: str) -> None:
    """`text` to `path` atomically: a temporary file beside it (not `*.prom`, so the
    collector never reads half a file), written, mode 0644 (node_exporter runs as its own
    user; the agent's umask is 0077), fsync'd, renamed over `path`, all within the
    directory as `_open_dir` opened it. Raises OSError."""
    tmp = f".{path.name}.tmp"
    dfd = _open_dir(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)  # never write through a file or link left there
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        try:
            try:
                os.fchmod(fd, 0o644)
                data = text.encode("utf-8")
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


def remove_textfile(path: Path) -> None:
    """`path` gone (a reload moved the file or turned it off), as `write_textfile` would
    reach it: never through a symlinked directory. Raises OSError, not when it is gone."""
    dfd = _open_dir(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=dfd)
    finally:
        os.close(dfd)
