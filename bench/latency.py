"""Latency from a kernel line to its finding, and the running agent's idle cost.

    python3 bench/latency.py [--lines 200] [--rate 50] [--idle 60]

1. Starts `nodewarden run` (a temp state dir and config: kmsg on, udev off, no probes,
   no log files) and waits for its real READY=1 on a notify socket of our own.
2. Writes `--lines` unique hung-task lines to /dev/kmsg at `--rate` per second, with
   kernel.printk_devkmsg=on for the duration (restored in `finally`: the default
   ratelimit drops all but 10 lines per 5 s while write() still succeeds).
3. Latency per line = the daemon's `mono` stamp on the finding's audit record (its
   CLOCK_MONOTONIC when it produced the record) minus our CLOCK_MONOTONIC just before
   write(). CLOCK_MONOTONIC is one clock for every process of the boot, so this is the
   agent's own delay -- read, parse, match, detect, audit -- and includes none of this
   script's polling of the audit file.
4. Then RSS (VmRSS of /proc/PID/status) and CPU (utime+stime of /proc/PID/stat, all
   threads, in 10 ms ticks; and the ns-precise sum of /proc/PID/task/*/schedstat) with
   1 s sampling: 10 s of the agent that took the burst (every line is now a firing
   finding, which the decision cycle walks each second), then `--idle` seconds of the
   agent restarted on the same state dir (it resumes after the saved kmsg position, so
   it holds no findings: really idle). Every process of the agent counts (bench/
   _proctree.py: children too); bench/idle.py sets the idle figure against Monit's.

Budgets: p99 < 100 ms (issue 4); RSS <= 25 MiB in all processes (issue 8). Printed,
never asserted (docs/architecture.md, convention 12: benchmarks print figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
import uuid
from pathlib import Path

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._proctree import cpu_ns, rss_tree, tree

PRINTK_DEVKMSG = Path("/proc/sys/kernel/printk_devkmsg")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_agent(
    work: Path, fresh: bool = True
) -> tuple[subprocess.Popen[bytes], socket.socket, Path]:
    state = work / "state"
    config = work / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{state}"\n[kmsg]\nenabled = true\n[udev]\nenabled = false\n'
        "[logs]\n",
        encoding="utf-8",
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify = work / ("notify" if fresh else "notify2")
    sock.bind(str(notify))
    # the script next to this interpreter, not a pyenv shim (a shell that forks)
    local = Path(sys.executable).parent / "nodewarden"
    exe = str(local) if local.exists() else shutil.which("nodewarden")
    if exe is None:
        sys.exit("nodewarden is not installed (pip install -e .)")
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    env.pop("WATCHDOG_USEC", None)
    with (work / "agent.log").open("ab") as log:
        proc = subprocess.Popen([exe, "run", "--config", str(config), "--log-level",
                                 "warning"], stdout=log, stderr=log, env=env)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        ready, _, _ = select.select([sock], [], [], 0.5)
        if ready and b"READY=1" in sock.recv(4096):
            return proc, sock, state / "audit.jsonl"
        if proc.poll() is not None:
            break
    proc.kill()
    sys.exit("agent did not become ready:\n" + (work / "agent.log").read_text())


def write_lines(n: int, rate: float, run_id: str) -> dict[str, float]:
    """Write n unique lines; returns subject -> CLOCK_MONOTONIC just before write().

    One open() per line: the kernel keeps its write rate limit per open file, so this
    also works where printk_devkmsg cannot be changed.
    """
    sent: dict[str, float] = {}
    start = time.monotonic()
    for i in range(n):
        # pace by the schedule, not by sleeping a fixed time after each write
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        task = f"{run_id}-{i}"
        # the newline finalises the record (without it readers wait for the next one); no
        # prefix: signatures match at the start of the message
        line = (f"<11>INFO: task {task}:{1000 + i} blocked for more than "
                "120 seconds.\n")
        fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
        try:
            sent[task] = time.monotonic()
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    return sent


def collect(audit: Path, sent: dict[str, float], deadline_s: float) -> dict[str, float]:
    """subject -> latency (s) for every line whose finding reached the audit log, polling
    the file until all are there or the deadline passes (tenacity drives the polling)."""
    got: dict[str, float] = {}

    def read() -> int:
        with audit.open(encoding="utf-8") as f:
            for raw in f:
                rec = json.loads(raw)
                subj = rec.get("subject")
                if rec.get("kind") == "finding" and subj in sent and subj not in got:
                    got[subj] = rec["mono"] - sent[subj]
        return len(got)

    with contextlib.suppress(RetryError):
        Retrying(stop=stop_after_delay(deadline_s), wait=wait_fixed(0.2),
                 retry=retry_if_result(lambda n: n < len(sent)))(read)
    return got


def cpu_seconds(pid: int) -> float:
    """utime + stime of the agent and its children (all threads, 10 ms ticks)."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_mib(pid: int) -> float:
    """VmRSS of the agent and every process it started, together."""
    return sum(mib for _, _, mib in rss_tree(pid))


def stop_agent(proc: subprocess.Popen[bytes]) -> int:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def measure_idle(pid: int, seconds: int, label: str) -> None:
    rss: list[float] = []
    ns0, cpu0, t0 = cpu_ns(tree(pid)), cpu_seconds(pid), time.monotonic()
    for _ in range(seconds):
        time.sleep(1)
        rss.append(rss_mib(pid))
    ns1, cpu1, t1 = cpu_ns(tree(pid)), cpu_seconds(pid), time.monotonic()
    pct = 100 * (cpu1 - cpu0) / (t1 - t0)
    pct_ns = 100 * (ns1 - ns0) / 1e9 / (t1 - t0)
    print(f"{label}, {seconds} s with 1 s sampling: RSS mean {statistics.mean(rss):.1f} MiB, "
          f"max {max(rss):.1f} MiB, every process (budget <= 25 MiB); CPU {pct:.3f} % of "
          "one core from "
          f"/proc/PID/stat ({1000 * (cpu1 - cpu0):.0f} ms in {t1 - t0:.0f} s), "
          f"{pct_ns:.3f} % from schedstat (against Monit: bench/idle.py)")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0, help="lines per second")
    ap.add_argument("--idle", type=int, default=60, help="seconds of idle measurement")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (writes /dev/kmsg and kernel.printk_devkmsg)")

    old = PRINTK_DEVKMSG.read_text().strip()
    with tempfile.TemporaryDirectory(prefix="nw-bench-") as tmp:
        work = Path(tmp)
        proc, sock, audit = start_agent(work)
        try:
            PRINTK_DEVKMSG.write_text("on\n")
            try:
                sent = write_lines(args.lines, args.rate, "b" + uuid.uuid4().hex[:8])
            finally:
                PRINTK_DEVKMSG.write_text(old + "\n")
            got = collect(audit, sent, 30)
            lat_ms = [v * 1000 for v in got.values()]
            print(f"kmsg line -> finding in the audit log: {len(got)}/{len(sent)} lines "
                  f"at {args.rate:g}/s")
            if lat_ms:
                print(f"  p50 {statistics.median(lat_ms):7.2f} ms   "
                      f"p99 {percentile(lat_ms, 0.99):7.2f} ms   "
                      f"max {max(lat_ms):7.2f} ms   (budget: p99 < 100 ms)")

            # the agent that took the burst now holds every line as a firing finding
            # (plus whatever the kernel ring held at start): its "idle" is not idle
            n_firing = len(got)
            measure_idle(proc.pid, 10, f"after the burst ({n_firing}+ findings firing)")
            # a restart resumes after the saved kmsg position: a really idle agent
            stop_agent(proc)
            proc, sock2, _ = start_agent(work, fresh=False)
            sock.close()
            sock = sock2
            time.sleep(2)
            measure_idle(proc.pid, args.idle, "restarted, idle")
        finally:
            code = stop_agent(proc)
            sock.close()
            if code != 0:
                print(f"agent exited {code}:\n" + (work / "agent.log").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
