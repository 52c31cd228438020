"""docs/metrics.md, generated from the metric declarations in agent/sources/metricspec.py.

Regenerate with `python -m agent.sources.metricsdoc > docs/metrics.md`; a unit test
checks that the committed page matches the declarations.
"""

from __future__ import annotations

import sys

from agent.sources.metricspec import METRICS, MetricSpec

INTRO = """\
# Metrics

`nodewarden sample` prints these names, and threshold rules and incident replays refer
to them. Names are flat and stable; `<dev>`, `<mountpoint>`, `<name>` and `<unit>` stand
for a block device (`vda`, `nvme0n1`, `dm-3`), a configured mount point (`/`,
`/var/mail`: the name is then `fs./var/mail.used_pct`), a configured probe and a systemd
unit (`unit.provision.service.cpu_pct`, `unit.session-4.scope.cpu_pct`).

*This page is generated from the declarations in `agent/sources/metricspec.py`
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
- **Units.** `unit.<unit>.cpu_pct` comes from the cgroup systemd keeps for each unit
  (agent/sources/cgroups.py): `cpu.stat` `usage_usec` on cgroup v2 — pure v2 at
  `/sys/fs/cgroup`, or the `unified` mount of a hybrid host, where the kernel keeps
  `usage_usec` even without the cpu controller — else `cpuacct.usage` of the v1 cpuacct
  hierarchy. Units are the `*.service` and `*.scope` cgroups in the slices
  (`system.slice`, its sub-slices such as `system-getty.slice`, `user.slice/user-N.slice`
  with `session-N.scope` and `user@N.service`, `machine.slice`); a unit's sub-cgroups
  count towards it, `init.scope` is never reported. The scan (one small read per unit)
  runs every 5 s and the samples in between carry its values. To keep a sample small, only
  the 10 busiest units at or above 1 % of a CPU are reported, plus, for 10 minutes, every
  unit reported before (at 0 once its cgroup is gone): a threshold rule sees a runaway
  unit come down, or stop, and resolves. For a unit at or above 50 %, the scan reads the
  unit's `cgroup.procs` and each process's `/proc/PID/stat`, and `MetricSample.details`
  names the process that used the most CPU since the previous scan (PID and command
  line); a threshold rule on the metric adds that sentence to the finding's evidence.
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
