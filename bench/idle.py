"""The running agent's idle cost against Monit's, side by side in the same window.

    python bench/idle.py [--seconds 60]

1. Starts `nodewarden run` with the default configuration (only `agent.state_dir` set, to
   a temp dir), waits for its READY=1, stops it and starts it again on the same state dir:
   the second one resumes after the saved kernel-log position, so it holds no findings
   from the ring (really idle).
2. Starts Debian's `monit -I` (foreground) with a control file of its own in the temp
   dir (its own pid, id and state files; never the machine's monit): `set daemon 1`,
   checking the system's load and memory, the root filesystem, the agent's process and a
   file. Both run in the same window; timing drifts 2x within a minute on these VMs, so
   only the ratio measured side by side means anything (docs/facts.md).
3. CPU over `--seconds`: every thread of every process of each tree (the agent and any
   child it has, monit), from /proc/PID/task/*/schedstat. RSS of every process of the
   agent, sampled every second; the mean and the largest total.

Budgets (issue 8): agent idle CPU <= 0.3x Monit's; agent RSS <= 25 MiB in all its
processes together. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._proctree import cpu_ns, rss_tree, tree

CPU_RATIO_BUDGET = 0.3
RSS_BUDGET_MIB = 25.0


def nodewarden() -> str:
    local = Path(sys.executable).parent / "nodewarden"
    exe = str(local) if local.exists() else shutil.which("nodewarden")
    if exe is None:
        sys.exit("nodewarden is not installed (pip install -e .)")
    return exe


def start_agent(work: Path, n: int) -> subprocess.Popen[bytes]:
    """`nodewarden run` with the defaults but the state dir; returns once READY=1 came."""
    config = work / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{work / "state"}"\n', encoding="utf-8")
    notify = work / f"notify{n}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    env.pop("WATCHDOG_USEC", None)
    with (work / "agent.log").open("ab") as log:
        proc = subprocess.Popen([nodewarden(), "run", "--config", str(config)],
                                stdout=log, stderr=log, env=env)
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end and proc.poll() is None:
            if select.select([sock], [], [], 0.5)[0] and b"READY=1" in sock.recv(4096):
                return proc
    finally:
        sock.close()
    proc.kill()
    sys.exit("agent did not become ready:\n" + (work / "agent.log").read_text())


def monit_config(work: Path, agent_pid: int) -> Path:
    (work / "agent.pid").write_text(f"{agent_pid}\n")
    watched = work / "watched.txt"
    watched.write_text("a file monit checks\n")
    rc = work / "monitrc"
    rc.write_text(f"""\
set daemon 1
set pidfile {work}/monit.pid
set idfile {work}/monit.id
set statefile {work}/monit.state
set logfile {work}/monit.log
check system bench_host
  if loadavg (1min) > 1000 then alert
  if memory usage > 99% then alert
check filesystem rootfs with path /
  if space usage > 99% then alert
check process nodewarden with pidfile {work}/agent.pid
  if cpu > 95% then alert
check file watched with path {watched}
  if changed timestamp then alert
""", encoding="utf-8")
    rc.chmod(0o600)  # monit refuses a control file others can read
    return rc


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    if shutil.which("monit") is None:
        sys.exit("monit is not installed (apt-get install monit; .ci/run does)")
    with tempfile.TemporaryDirectory(prefix="nw-idle-") as tmp:
        work = Path(tmp)
        stop(start_agent(work, 1))  # reads the ring once and saves its position
        agent = start_agent(work, 2)
        monit = subprocess.Popen(["monit", "-I", "-c", str(monit_config(work, agent.pid))],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)  # both past their start-up
            measure(agent.pid, monit.pid, args.seconds)
        finally:
            stop(monit)
            stop(agent)
    return 0


def measure(agent: int, monit: int, seconds: int) -> None:
    a0, m0, t0 = cpu_ns(tree(agent)), cpu_ns(tree(monit)), time.monotonic()
    totals: list[float] = []
    last: list[tuple[int, str, float]] = []
    for _ in range(seconds):
        time.sleep(1)
        last = rss_tree(agent)
        totals.append(sum(mib for _, _, mib in last))
    a1, m1, t1 = cpu_ns(tree(agent)), cpu_ns(tree(monit)), time.monotonic()
    window = t1 - t0
    agent_pct = 100 * (a1 - a0) / 1e9 / window
    monit_pct = 100 * (m1 - m0) / 1e9 / window
    ratio = (a1 - a0) / (m1 - m0) if m1 > m0 else float("inf")
    print(f"idle CPU, {window:.0f} s side by side (every thread of every process):")
    print(f"  agent  {agent_pct:.4f} % of one core ({(a1 - a0) / 1e3 / window:.0f} µs/s)")
    print(f"  monit  {monit_pct:.4f} % of one core ({(m1 - m0) / 1e3 / window:.0f} µs/s)")
    print(f"  ratio  {ratio:.2f}   budget <= {CPU_RATIO_BUDGET}   "
          f"{'OK' if ratio <= CPU_RATIO_BUDGET else 'OVER BUDGET'}")
    print("agent RSS, every process (at the end):")
    for pid, comm, mib in last:
        print(f"  pid {pid:<8} {comm:<16} {mib:6.1f} MiB")
    print(f"  total  mean {statistics.mean(totals):.1f} MiB, max {max(totals):.1f} MiB   "
          f"budget <= {RSS_BUDGET_MIB:.0f} MiB   "
          f"{'OK' if max(totals) <= RSS_BUDGET_MIB else 'OVER BUDGET'}")
    print(f"  ({len(last)} process(es); monit itself: "
          f"{sum(m for _, _, m in rss_tree(monit)):.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
