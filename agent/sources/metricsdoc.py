"""docs/metrics.md, generated from the metric declarations in agent/sources/metrics.py.

Regenerate with `python -m agent.sources.metricsdoc > docs/metrics.md`; a unit test
checks that the committed page matches the declarations.
"""

from __future__ import annotations

import sys

from agent.sources.metrics import METRICS, MetricSpec

INTRO = """\
# Metrics

`nodewarden sample` prints these names, and threshold rules and incident replays refer
to them. Names are flat and stable; `<dev>`, `<mountpoint>` and `<name>` stand for a
block device (`vda`, `nvme0n1`, `dm-3`), a configured mount point (`/`, `/var/mail`:
the name is then `fs./var/mail.used_pct`) and a configured probe.

*This page is generated from the declarations in `agent/sources/metrics.py`
(`python -m agent.sources.metricsdoc > docs/metrics.md`); edit those, not this page.*

## How values are taken

- **Deltas and rates.** CPU percentages, TCP rates and disk figures come from the
  difference between two reads of cumulative counters. The sampler takes a priming
  read when it starts, so the first sample already has them (over the time since
  start-up). A rate is *absent* (not in `values`, not in `unavailable`) when no time has
  passed or a counter went backwards (a device replaced under the same name);
  `nodewarden sample` waits about one second between its priming read and its sample.
- **Unavailable is not an error.** A metric this host cannot provide (no PSI, no swap
  figures, a timed-out NFS mount) is listed in `MetricSample.unavailable`, with the
  reason in `MetricSample.reasons` (`unavailable` and the reasons in `--json`).
- **D-state tasks.** Scanning `/proc/[pid]/stat` costs one read per process, so it
  runs every 5 s rather than every sample; `procs_dstate` and the task names
  (`MetricSample.blocked_tasks`, `blocked_tasks` in `--json`) are from the last scan.
  Only each process's main thread is looked at (kernel threads such as `nfsd`, `jbd2`
  and `kworker` are processes of their own).
- **Slow sources.** Filesystem use (statvfs in a helper process, with a timeout per
  mount: a hung NFS mount cannot hang the agent; a helper that timed out is killed and
  that mount is skipped until the killed helper has exited) and the mail queue (a
  command with a timeout) run in worker threads every 10 s and 30 s; the sample carries
  the latest cached value, or marks the metric unavailable when that value is stale.

## Names

| name | unit | source | meaning | unavailable or absent when |
|---|---|---|---|---|
"""


def _row(spec: MetricSpec) -> str:
    cells = (f"`{spec.name}`", spec.unit, spec.source, spec.description, spec.unavailable or "—")
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render() -> str:
    return INTRO + "\n".join(_row(s) for s in METRICS) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
