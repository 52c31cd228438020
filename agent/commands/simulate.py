"""`nodewarden simulate SCENARIO`: replay an incident through the real decision code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli import EXIT_OK, EXIT_USAGE
from agent.schema import MODES, ConfigInvalid

HELP = (
    "Replay a scenario (JSON lines: kernel lines, log lines, metrics, probe results, "
    "device events at t seconds) through the real detectors, policy ladders and guard "
    "chain with a simulated clock, and print the timeline of findings, verdicts, plans "
    "and outcomes. Nothing runs: plans go to a recording runner (in --mode enforce it "
    "reports each plan as run successfully, so budgets and ladders advance). "
    "Format: docs/simulate.md. Exit 0 after a replay; 2 for a malformed scenario "
    "(file:line: reason) or configuration."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", metavar="SCENARIO", type=Path,
                        help="the scenario file (JSON lines; e.g. tests/scenarios/*.jsonl)")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration to replay with (default: $NODEWARDEN_CONFIG, "
                             "/etc/nodewarden/agent.toml, or built-in defaults); the "
                             "scenario's host line overrides role, hostname and mode")
    parser.add_argument("--json", action="store_true",
                        help="JSON lines: t (seconds from the start), kind and its fields")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="override the mode (default: the host line's, else the config's)")


def main(args: argparse.Namespace) -> int:
    from agent.simulate.render import render, to_json_line
    from agent.simulate.replay import replay, scenario_config
    from agent.simulate.scenario import ScenarioError, read_scenario

    try:
        scenario = read_scenario(args.scenario)
        loaded = scenario_config(scenario, args.config, args.mode)
        timeline = replay(scenario, loaded)
    except ScenarioError as exc:
        print(f"nodewarden simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigInvalid as exc:
        for err in exc.errors:
            print(f"nodewarden simulate: {err}", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    config = loaded.config
    if not args.json:
        out.write(f"# {scenario.file}: role {config.agent.role}, mode {config.agent.mode}, "
                  f"host {config.agent.hostname}, {scenario.end:g} s simulated\n")
    for event in timeline:
        out.write((to_json_line(event) if args.json else render(event)) + "\n")
    out.flush()
    return EXIT_OK
