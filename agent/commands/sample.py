"""`nodewarden sample`: what the agent sees right now, for an operator's quick look."""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TextIO

from agent.cli import EXIT_OK, EXIT_USAGE
from agent.clock import Clock, SystemClock
from agent.config import Config
from agent.model import DeviceEvent, MetricSample, ProbeResult
from agent.sources.settings import ProbeSettings

#: seconds between the sampler's priming read and the sample, so rates exist
RATE_WINDOW_S = 1.0

HELP = (
    "Print one metrics sample, the block-device inventory and the result of every "
    "configured probe. Takes about one second: rates (CPU %, TCP, disks) are deltas "
    "between a priming read and a sample taken one second later. Metric names are the "
    "stable ones of docs/metrics.md. Exit 0 after the sample (a failed probe is a "
    "result, not an error); 2 for a bad configuration."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true",
        help='one JSON object: {"t", "metrics", "unavailable", "reasons", '
        '"blocked_tasks", "devices", "probes"}; probe.<name>.ok and '
        "probe.<name>.latency_ms are merged into metrics",
    )
    parser.add_argument(
        "--config", metavar="FILE",
        help="configuration file (default /etc/nodewarden/agent.toml or NODEWARDEN_CONFIG)",
    )


def main(args: argparse.Namespace) -> int:
    from agent.commands._operator import load

    config = load("sample", args.config)
    if config is None:
        return EXIT_USAGE
    clock = SystemClock()
    sample, devices, probes = collect(config, clock)
    if args.json:
        json.dump(to_json(sample, devices, probes), sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print_table(sample, devices, probes, sys.stdout)
    return EXIT_OK


def collect(
    config: Config, clock: Clock
) -> tuple[MetricSample, list[DeviceEvent], list[ProbeResult]]:
    """Probes run in threads while the sampler waits out its rate window."""
    from agent.sources.metrics import MetricsSampler

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(config.probes)))) as pool:
        pending = [pool.submit(_probe, p, clock) for p in config.probes]
        with MetricsSampler(config.metrics, clock) as sampler:
            devices = _inventory(config, clock)
            clock.sleep(RATE_WINDOW_S)
            m = config.metrics
            sampler.wait_slow(
                max(m.fs_timeout_s * max(1, len(m.filesystems)), m.mailq_timeout_s) + 0.5
            )
            sample = sampler.sample()
        probes = [f.result() for f in pending]
    return sample, devices, probes


def _probe(settings: ProbeSettings, clock: Clock) -> ProbeResult:
    from agent.sources.probes import run_probe

    return run_probe(settings, clock)


def _inventory(config: Config, clock: Clock) -> list[DeviceEvent]:
    if not config.udev.enabled:
        return []
    from agent.sources.udev import UdevMonitor

    try:
        monitor = UdevMonitor(clock)
    except OSError as exc:
        print(f"nodewarden sample: no device inventory: {exc}", file=sys.stderr)
        return []
    try:
        return monitor.inventory()
    finally:
        monitor.close()


def merged_metrics(sample: MetricSample, probes: list[ProbeResult]) -> dict[str, float]:
    metrics = dict(sample.values)
    for p in probes:
        metrics[f"probe.{p.name}.ok"] = 1.0 if p.ok else 0.0
        if p.latency_ms is not None:
            metrics[f"probe.{p.name}.latency_ms"] = p.latency_ms
    return metrics


def to_json(
    sample: MetricSample, devices: list[DeviceEvent], probes: list[ProbeResult]
) -> dict[str, Any]:
    unavailable = set(sample.unavailable)
    reasons = dict(sample.reasons)
    for p in probes:
        if p.latency_ms is None:
            name = f"probe.{p.name}.latency_ms"
            unavailable.add(name)
            reasons[name] = p.detail or "no answer"
    return {
        "t": sample.t,
        "metrics": merged_metrics(sample, probes),
        "unavailable": sorted(unavailable),
        "reasons": reasons,
        "blocked_tasks": list(sample.blocked_tasks),
        "devices": [asdict(d) for d in devices],
        "probes": [asdict(p) for p in probes],
    }


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value == int(value) and abs(value) < 1e15 else f"{value:.2f}"


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    unit = units[i]
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def print_table(
    sample: MetricSample, devices: list[DeviceEvent], probes: list[ProbeResult], out: TextIO
) -> None:
    metrics = merged_metrics(sample, probes)
    width = max((len(n) for n in metrics), default=10)
    out.write("metrics\n")
    for name in sorted(metrics):
        out.write(f"  {name:<{width}}  {_fmt(metrics[name])}\n")
    if sample.unavailable:
        out.write("unavailable\n")
        for name in sorted(sample.unavailable):
            out.write(f"  {name:<{width}}  {sample.reasons.get(name, '')}\n")
    out.write(
        "blocked tasks (D state)\n  "
        + (", ".join(sample.blocked_tasks) if sample.blocked_tasks else "none")
        + "\n"
    )
    out.write("devices\n")
    if not devices:
        out.write("  none\n")
    for d in devices:
        ident = " ".join(x for x in (d.model, d.serial) if x)
        out.write(f"  {d.device:<12} {d.devtype:<10} {human_size(d.size_bytes):>10}  {ident}\n")
    out.write("probes\n")
    if not probes:
        out.write("  none configured\n")
    for p in probes:
        latency = f"{p.latency_ms:.1f} ms" if p.latency_ms is not None else "-"
        out.write(f"  {p.name:<12} {'ok' if p.ok else 'FAIL':<4} {latency:>10}  {p.detail}\n")
