"""The metrics textfile (docs/deploy.md "Metrics"): the text format written by hand and
read back with prometheus-client's own parser, only fixed vocabularies as labels, the
daemon's counting and its writes (atomic, 0644, at most every interval, a failure said
once and never raised)."""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.clock import FakeClock
from agent.config import AgentSettings, Config, Loaded, parse_config
from agent.daemon.status import CycleStatus
from agent.daemon.textfile import TextfileMetrics
from agent.daemon.watchdog import NullNotifier
from agent.detect.catalog import Catalog
from agent.pipeline.api import Event, EventKind
from agent.report.exposition import Family, Sample, format_value, render
from agent.report.prometheus import (
    GUARDS,
    AgentState,
    ReporterView,
    TextfileSettings,
    families,
    write_textfile,
)
from agent.report.reporter import ReporterStatus
from agent.report.spool import SpoolStats
from tests.unit._signatures import REPO

#: others' text: quotes, a backslash, a newline, braces, a would-be second sample
HOSTILE = 'evil"} 1\nnodewarden_pwned{x="\\'

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample, by (name, sorted labels), as prometheus-client's parser reads it."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


# --------------------------------------------------------------------------- the format
def test_label_values_and_help_survive_the_round_trip_through_the_parser() -> None:
    family = Family("t_metric", "gauge", 'help with \\ backslash,\nnewline and "quotes"',
                    (Sample((("a", HOSTILE), ("b", "plain")), 3.0),))
    text = render([family])
    assert "\nnodewarden_pwned" not in text  # the newline is escaped, not a new line
    (parsed,) = list(text_string_to_metric_families(text))
    assert parsed.documentation == 'help with \\ backslash,\nnewline and "quotes"'
    assert parsed.type == "gauge"
    assert [(s.name, s.labels, s.value) for s in parsed.samples] == [
        ("t_metric", {"a": HOSTILE, "b": "plain"}, 3.0)]


@pytest.mark.parametrize(("value", "text"), [
    (3.0, "3"), (0.0, "0"), (-2.0, "-2"), (0.25, "0.25"), (1795977695.0493352,
                                                            "1795977695.0493352"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"), (1e300, "1e+300"),
])
def test_values_are_spelt_as_the_format_says(value: float, text: str) -> None:
    assert format_value(value) == text
    parsed = parse(render([Family("v", "gauge", "v", (Sample((), value),))]))[("v", ())]
    assert parsed == value or (math.isnan(value) and math.isnan(parsed))


@pytest.mark.parametrize(("name", "label"), [("bad-name", "ok"), ("ok", "bad-label"),
                                              ("ok", "__reserved"), ("9lives", "ok")])
def test_names_outside_the_format_are_refused(name: str, label: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        Family(name, "gauge", "x", (Sample(((label, "v"),), 1.0),))


def _state(**over: Any) -> AgentState:
    base: dict[str, Any] = {
        "mode": "enforce", "started": 1_700_000_000.5,
        "firing": {("auth-flood", "error"): 2, ("hung-task", "warning"): 0},
        "actions": {("block-addresses", "ok"): 3, ("page", "dry-run"): 1},
        "denials": {"cooldown": 4, "lease": 1},
        "last_cycle": 1_700_000_100.25, "last_cycle_duration_s": 0.004,
        "reporter": ReporterView(True, 7, 1_700_000_099.0),
    }
    return AgentState(**{**base, **over})


def test_the_agents_state_parses_back_to_the_same_values() -> None:
    samples = parse(render(families(_state())))
    assert samples == {
        ("nodewarden_findings_firing", (("problem", "auth-flood"), ("severity", "error"))): 2,
        ("nodewarden_findings_firing", (("problem", "hung-task"), ("severity", "warning"))): 0,
        ("nodewarden_actions_total", (("action", "block-addresses"), ("outcome", "ok"))): 3,
        ("nodewarden_actions_total", (("action", "page"), ("outcome", "dry-run"))): 1,
        ("nodewarden_guard_denials_total", (("guard", "cooldown"),)): 4,
        ("nodewarden_guard_denials_total", (("guard", "lease"),)): 1,
        ("nodewarden_last_cycle_timestamp_seconds", ()): 1_700_000_100.25,
        ("nodewarden_last_cycle_duration_seconds", ()): 0.004,
        ("nodewarden_mode", (("mode", "dry-run"),)): 0,
        ("nodewarden_mode", (("mode", "enforce"),)): 1,
        ("nodewarden_mode", (("mode", "observe"),)): 0,
        ("nodewarden_start_time_seconds", ()): 1_700_000_000.5,
        ("nodewarden_reporter_connected", ()): 1,
        ("nodewarden_reporter_spool_depth", ()): 7,
        ("nodewarden_reporter_last_ack_timestamp_seconds", ()): 1_700_000_099.0,
    }
    types = {f.name: f.type for f in text_string_to_metric_families(render(families(_state())))}
    assert types["nodewarden_actions"] == "counter"  # the parser drops `_total`
    assert types["nodewarden_guard_denials"] == "counter"
    assert types["nodewarden_findings_firing"] == "gauge"


def test_what_is_not_known_yet_is_left_out_not_made_up() -> None:
    text = render(families(_state(last_cycle=None, last_cycle_duration_s=None,
                                  reporter=ReporterView(False, 0, None))))
    names = {name for name, _ in parse(text)}
    assert "nodewarden_last_cycle_timestamp_seconds" not in names
    assert "nodewarden_reporter_last_ack_timestamp_seconds" not in names
    assert "# TYPE nodewarden_last_cycle_timestamp_seconds gauge" in text  # still described
    alone = {name for name, _ in parse(render(families(_state(reporter=None))))}
    assert not {n for n in alone if n.startswith("nodewarden_reporter_")}


# --------------------------------------------------------------------------- the daemon's
def _loaded(**textfile: Any) -> Loaded:
    config = Config(agent=AgentSettings(hostname="h", mode="dry-run"),
                    textfile=TextfileSettings(**textfile))
    return Loaded(config, Catalog())


def _a_problem() -> str:
    """A problem the default rules raise (so in the vocabulary)."""
    return next(str(r.problem) for r in Config().rules if getattr(r, "problem", None))


def _event(kind: EventKind, **fields: Any) -> Event:
    return Event(1.0, kind, MappingProxyType(fields))


class _Reporting:
    def __init__(self, status: ReporterStatus | None) -> None:
        self.now = status

    def status(self) -> ReporterStatus | None:
        return self.now


def _reporter_status(depth: int, last_ack: float | None) -> ReporterStatus:
    return ReporterStatus(True, SpoolStats(depth, 100 * depth, {}, 0), last_ack, "", 1)


def _metrics(loaded: Loaded, clock: FakeClock) -> tuple[TextfileMetrics, CycleStatus]:
    status = CycleStatus(NullNotifier())
    return TextfileMetrics(loaded, status, clock), status


def _emit(metrics: TextfileMetrics, status: CycleStatus, event: Event) -> None:
    status.track(event)  # as Daemon._emit does: the loop's view, then the textfile's
    metrics.track(event)


def test_counts_follow_the_events_and_hostile_text_labels_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    problem = _a_problem()
    path = tmp_path / "nodewarden.prom"
    metrics, status = _metrics(_loaded(path=path), clock)
    for event in (
        _event("finding", problem=problem, subject=HOSTILE, severity="error", state="firing"),
        _event("finding", problem=problem, subject="b", severity="error", state="firing"),
        _event("finding", problem=HOSTILE, subject="c", severity=HOSTILE, state="firing"),
        _event("verdict", action="page", guard="cooldown", allow=False, reason=HOSTILE),
        _event("verdict", action="page", guard=HOSTILE, allow=False, reason=HOSTILE),
        _event("verdict", action="page", guard="mode", allow=True, reason="ok"),
        _event("outcome", action="page", subject=HOSTILE, ok=True, executed=False),
        _event("outcome", action="restart-service", ok=False, executed=True, detail=HOSTILE),
        _event("outcome", action=HOSTILE, ok=False, executed=False),
        _event("resolved", problem=problem, subject="b", severity="error", state="resolved"),
    ):
        _emit(metrics, status, event)
    metrics.tick(0.0, _loaded(path=path), _Reporting(None))
    text = path.read_text()
    assert "evil" not in text and "pwned" not in text
    assert '"b"' not in text and '"c"' not in text  # no subject is a label value
    samples = {(n, labels): v for (n, labels), v in parse(text).items()
               if n not in ("nodewarden_mode", "nodewarden_start_time_seconds")}
    assert samples == {
        ("nodewarden_findings_firing", (("problem", problem), ("severity", "error"))): 1,
        ("nodewarden_findings_firing", (("problem", "other"), ("severity", "other"))): 1,
        ("nodewarden_guard_denials_total", (("guard", "cooldown"),)): 1,
        ("nodewarden_guard_denials_total", (("guard", "other"),)): 1,
        ("nodewarden_actions_total", (("action", "page"), ("outcome", "dry-run"))): 1,
        ("nodewarden_actions_total", (("action", "restart-service"), ("outcome", "failed"))): 1,
        ("nodewarden_actions_total", (("action", "other"), ("outcome", "not-run"))): 1,
    }


def test_a_resolved_series_goes_to_zero_and_a_reload_that_drops_findings_is_followed(
        tmp_path: Path) -> None:
    clock = FakeClock()
    problem = _a_problem()
    metrics, status = _metrics(_loaded(), clock)
    for subject in ("a", "b"):
        _emit(metrics, status, _event("finding", problem=problem, subject=subject,
                                      severity="critical", state="firing"))
    key = ("nodewarden_findings_firing", (("problem", problem), ("severity", "critical")))
    assert parse(render(families(metrics.state(None))))[key] == 2
    _emit(metrics, status, _event("resolved", problem=problem, subject="a"))
    assert parse(render(families(metrics.state(None))))[key] == 1
    status.firing.clear()  # what Daemon._apply does when a reload changed the rules
    assert parse(render(families(metrics.state(None))))[key] == 0


def test_written_at_the_first_turn_then_at_most_every_interval_and_at_stop(
        tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    path = tmp_path / "nodewarden.prom"
    loaded = _loaded(path=path, interval_s=15.0)
    metrics, _status = _metrics(loaded, clock)
    reporting = _Reporting(_reporter_status(3, None))
    clock.advance(1.0)
    metrics.timed(lambda: clock.advance(0.25))()  # a decision cycle of 0.25 s
    metrics.tick(clock.monotonic(), loaded, reporting)
    first = parse(path.read_text())
    assert first[("nodewarden_last_cycle_timestamp_seconds", ())] == 1_800_000_001.25
    assert first[("nodewarden_last_cycle_duration_seconds", ())] == 0.25
    assert first[("nodewarden_start_time_seconds", ())] == 1_800_000_000.0
    assert first[("nodewarden_reporter_spool_depth", ())] == 3
    assert ("nodewarden_reporter_last_ack_timestamp_seconds", ()) not in first
    reporting.now = _reporter_status(0, 1_800_000_005.5)
    clock.advance(14.0)
    metrics.tick(clock.monotonic(), loaded, reporting)
    assert parse(path.read_text()) == first  # not due yet
    clock.advance(1.0)
    metrics.tick(clock.monotonic(), loaded, reporting)
    second = parse(path.read_text())
    assert second[("nodewarden_reporter_spool_depth", ())] == 0
    assert second[("nodewarden_reporter_last_ack_timestamp_seconds", ())] == 1_800_000_005.5
    assert second[("nodewarden_reporter_connected", ())] == 1
    metrics.stop(loaded, reporting)
    assert parse(path.read_text())[("nodewarden_reporter_connected", ())] == 0
    assert os.listdir(tmp_path) == ["nodewarden.prom"]  # no temporary file left


def test_the_file_is_0644_whatever_the_umask_and_replaced_not_written_through(
        tmp_path: Path) -> None:
    path = tmp_path / "nodewarden.prom"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / ".nodewarden.prom.tmp").symlink_to(victim)  # planted at the temp name
    old = os.umask(0o077)
    try:
        write_textfile(path, "# HELP a b\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == "# HELP a b\n"
    assert victim.read_text() == "keep me"


def test_a_symlinked_directory_is_not_followed_to_write_or_remove(tmp_path: Path) -> None:
    # the collector's directory belongs to node_exporter's user, in a parent it also owns
    # (Debian): that user swaps the directory for a link to one of root's
    victim = tmp_path / "etc"
    victim.mkdir()
    (victim / "nodewarden.prom").write_text("root's own")
    link = tmp_path / "node-exporter"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        write_textfile(link / "nodewarden.prom", "# HELP a b\n")
    assert sorted(os.listdir(victim)) == ["nodewarden.prom"]
    assert (victim / "nodewarden.prom").read_text() == "root's own"
    # a reload moves the file: the old one goes, but not through a directory swapped since
    collector = tmp_path / "collector"
    collector.mkdir()
    loaded = _loaded(path=collector / "nodewarden.prom")
    metrics, _status = _metrics(loaded, FakeClock())
    metrics.tick(0.0, loaded, _Reporting(None))
    collector.rename(tmp_path / "collector.old")
    collector.symlink_to(victim)
    metrics.tick(1.0, _loaded(path=tmp_path / "moved.prom"), _Reporting(None))
    assert (victim / "nodewarden.prom").read_text() == "root's own"
    assert (tmp_path / "moved.prom").exists()


def test_severities_of_findings_a_reload_dropped_are_forgotten_without_a_textfile() -> None:
    clock = FakeClock()
    loaded = _loaded()
    metrics, status = _metrics(loaded, clock)
    for n in range(50):
        _emit(metrics, status, _event("finding", problem=_a_problem(), subject=f"s{n}",
                                      severity="error", state="firing"))
    status.clear()  # Daemon._apply after a reload that changed the rules
    metrics.tick(0.0, loaded, _Reporting(None))
    assert len(status.severity) == 0  # the memory this test is about


def test_a_failing_write_is_said_once_never_raised_and_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    path = tmp_path / "missing" / "nodewarden.prom"
    loaded = _loaded(path=path, interval_s=1.0)
    metrics, _status = _metrics(loaded, clock)
    with caplog.at_level(logging.INFO, logger="nodewarden"):
        for _ in range(5):
            metrics.tick(clock.monotonic(), loaded, _Reporting(None))
            clock.advance(1.0)
        assert len([r for r in caplog.records if "cannot write" in r.message]) == 1
        path.parent.mkdir()
        metrics.tick(clock.monotonic(), loaded, _Reporting(None))
    assert path.exists()
    assert any("written again" in r.message for r in caplog.records)


def test_a_reload_that_moves_or_turns_off_the_file_leaves_no_stale_one(tmp_path: Path) -> None:
    clock = FakeClock()
    first, second = tmp_path / "a.prom", tmp_path / "b.prom"
    loaded = _loaded(path=first)
    metrics, _status = _metrics(loaded, clock)
    metrics.tick(0.0, loaded, _Reporting(None))
    moved = _loaded(path=second)
    metrics.tick(0.5, moved, _Reporting(None))  # written at once, not after the interval
    assert not first.exists() and second.exists()
    metrics.tick(1.0, _loaded(), _Reporting(None))
    assert not second.exists()


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize(("value", "reason"), [
    ("relative/n.prom", "must be an absolute path"),
    ("/var/lib/prometheus/node-exporter/nodewarden.txt", "must name a *.prom file"),
    ("/var/lib/prometheus/node-exporter/.prom", "must name a *.prom file"),
])
def test_a_textfile_the_collector_would_not_read_is_refused(value: str, reason: str) -> None:
    _config, errors = parse_config({"metrics": {"textfile": value}}, "f")
    assert [(e.key, reason in e.reason) for e in errors] == [("metrics.textfile", True)]


def test_the_textfile_keys_share_the_metrics_table_with_the_sampler() -> None:
    config, errors = parse_config({"metrics": {
        "textfile": "/var/lib/prometheus/node-exporter/nodewarden.prom",
        "textfile_interval_s": 30, "filesystems": ["/", "/srv"], "colour": "blue"}}, "f")
    assert [e.key for e in errors] == ["metrics.colour"]  # one unknown key, said once
    assert config.textfile == TextfileSettings(
        Path("/var/lib/prometheus/node-exporter/nodewarden.prom"), 30.0)
    assert config.metrics.filesystems == ("/", "/srv")
    assert Config().textfile.path is None  # off unless asked for


# --------------------------------------------------------------------------- in step
def test_every_guard_name_is_in_the_vocabulary() -> None:
    """A new guard must not be counted as `other`: its name is a label value."""
    names = set()
    for path in [*(REPO / "agent" / "guards").glob("*.py"), *(REPO / "agent" / "pipeline").glob(
            "*.py")]:
        text = path.read_text()
        names |= set(re.findall(r'^\s+name = "([a-z-]+)"', text, flags=re.M))
        names |= set(re.findall(r'Verdict\("([a-z-]+)"', text))
    assert names >= {"mode", "trust", "lease", "plan"}  # the scan finds them at all
    assert names - set(GUARDS) == set()


def test_docs_deploy_names_every_metric_and_no_other() -> None:
    section = (REPO / "docs" / "deploy.md").read_text().split("## Metrics", 1)[1]
    section = section.split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(nodewarden_[a-z_]+)`", section, flags=re.M))
    emitted = {f.name for f in families(_state())}
    assert documented == emitted
    mentioned = set(re.findall(r"\bnodewarden_[a-z_]+", section))
    assert mentioned <= emitted, mentioned - emitted
