"""The coordinator under a fleet's load, through the real sshd: what it holds and costs.

    python bench/coordinator.py [--agents 50] [--seconds 20] [--heartbeat 1]

1. A coordinator in a temp dir (SQLite store; one group, max_disruptive 2) with one key
   per simulated agent (`keys add`), and a private sshd on 127.0.0.1 serving them.
2. N agents in this process, each the agent's own Reporter (paramiko, spool, window),
   each sending a heartbeat every --heartbeat seconds after a burst of findings.
3. Over --seconds: messages/s the coordinator held (rows in its store), and the
   coordinator side's CPU (every thread of sshd and every session behind it) and memory
   (PSS and RSS of the same processes) while N sessions are held.
4. A lease storm: every agent asks for a node-restart lease at the same instant through
   the lease gate's client; the p50/p99 decision time, and how many were granted (2).
5. The agent's RSS with the reporter running: a real `nodewarden run` with
   [coordinator], idle after a restart (skip with --no-agent).

Budgets (issue 9): 1,000 agents within 2 GiB on this 2-core machine (the figure per
session times 1,000 is printed), p99 lease decision <= 1 s, the agent <= 50 MiB with the
reporter. Printed, never asserted. Today's `session` is one Python process per agent
(docs/coordinator.md): the per-session memory printed here is why `serve` comes next.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.daemon.leases import CoordinatorLeases
from agent.report.reporter import Reporter
from agent.report.settings import ReporterSettings
from agent.report.spool import Spool
from bench._proctree import cpu_ns, tree
from coordinator.store import SqliteStore
from tests.integration._coordinator import Coordinator, make_coordinator
from tests.integration._sshd import Sshd, running_sshd

GROUP = "fleet"


def memory(pids: list[int]) -> tuple[float, float]:
    """(PSS, RSS) of `pids` together, in MiB (PSS shares what sessions share)."""
    pss = rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except OSError:
            continue
    return pss / 1024, rss / 1024


def listener(server: Sshd) -> int:
    return int((server.log.parent / "sshd.pid").read_text())


def start_agents(c: Coordinator, server: Sshd, known: Path, work: Path, *, n: int,
                 findings: int) -> list[Reporter]:
    agents = []
    for i in range(n):
        settings = ReporterSettings(host="127.0.0.1", port=server.port, user="root",
                                    key_file=c.keys[f"a{i}"], known_hosts=known,
                                    backoff_max_s=2.0, lease_timeout_s=30.0)
        r = Reporter(settings, Spool(work / f"spool{i}", fsync=False), {"bench": True})
        for k in range(findings):
            r.send("finding", {"problem": "bench", "subject": f"s{k}", "severity": "info"})
        r.start()
        agents.append(r)
    deadline = time.monotonic() + 120
    while not all(r.connected for r in agents) and time.monotonic() < deadline:
        time.sleep(0.1)
    return agents


def held(store_path: Path) -> int:
    store = SqliteStore(store_path)
    try:
        return len(store.run(lambda tx: tx.messages()))
    finally:
        store.close()


def lease_storm(agents: list[Reporter], port: int) -> tuple[list[float], int]:
    times: list[float] = []
    granted = []
    lock = threading.Lock()
    go = threading.Event()

    def ask(i: int, r: Reporter) -> None:
        client = CoordinatorLeases(r, f"127.0.0.1:{port}", 30.0, time.time)
        go.wait()
        t0 = time.monotonic()
        lease = client.acquire("node-restart", f"a{i}", 600)
        with lock:
            times.append(time.monotonic() - t0)
            granted.append(lease is not None)

    threads = [threading.Thread(target=ask, args=(i, r)) for i, r in enumerate(agents)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    return times, sum(granted)


def agent_rss(c: Coordinator, server: Sshd, known: Path, work: Path) -> float:
    """A real agent with [coordinator], started twice (the second resumes: idle)."""
    config = work / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{work / "agent-state"}"\n[kmsg]\nenabled = false\n'
                      f'[coordinator]\nhost = "127.0.0.1"\nport = {server.port}\nuser = "root"\n'
                      f'key_file = "{c.keys["agent"]}"\nknown_hosts = "{known}"\n')
    exe = str(Path(sys.executable).parent / "nodewarden")
    rss = 0.0
    for wait in (5.0, 10.0):
        p = subprocess.Popen([exe, "run", "--config", str(config)], stderr=subprocess.DEVNULL)
        time.sleep(wait)
        rss = memory([p.pid])[1]
        p.terminate()
        p.wait(30)
    return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--findings", type=int, default=20)
    parser.add_argument("--no-agent", action="store_true", help="skip the agent's RSS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        c = make_coordinator(work / "c", [f"a{i}" for i in range(args.agents)] + ["agent"],
                             group=GROUP, max_disruptive=2)
        with running_sshd(c.authorized_keys) as server:
            known = work / "known_hosts"
            known.write_bytes(server.known_hosts.read_bytes())
            run(args, c, server, known, work)
    return 0


def run(args: argparse.Namespace, c: Coordinator, server: Sshd, known: Path,
        work: Path) -> None:
    t0 = time.monotonic()
    agents = start_agents(c, server, known, work, n=args.agents, findings=args.findings)
    connected = sum(r.connected for r in agents)
    print(f"{connected}/{args.agents} agents connected through sshd in "
          f"{time.monotonic() - t0:.1f} s (each a session behind its own forced command)")
    pids = tree(listener(server))
    before, cpu0, t1 = held(c.store), cpu_ns(pids), time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(args.heartbeat):
            for r in agents:
                r.send("heartbeat", {"bench": True})

    beater = threading.Thread(target=beat)
    beater.start()
    time.sleep(args.seconds)
    pids = tree(listener(server))
    pss, rss = memory(pids)
    stop.set()
    beater.join()
    cpu, elapsed = (cpu_ns(pids) - cpu0) / 1e9, time.monotonic() - t1
    rate = (held(c.store) - before) / elapsed
    print(f"held {rate:.0f} messages/s over {elapsed:.0f} s (a heartbeat every "
          f"{args.heartbeat:g} s from each agent)")
    print(f"coordinator side ({len(pids)} processes: sshd and the sessions): "
          f"CPU {100 * cpu / elapsed:.1f}% of one core; memory PSS {pss:.0f} MiB, RSS "
          f"{rss:.0f} MiB = {pss / max(connected, 1):.1f} MiB PSS per agent -> "
          f"{pss / max(connected, 1) * 1000 / 1024:.1f} GiB for 1,000 agents "
          "(budget: 2 GiB)")
    times, granted = lease_storm(agents, server.port)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"lease storm: {len(times)} requests at once, {granted} granted (max_disruptive "
          f"2); decision p50 {statistics.median(times) * 1000:.0f} ms, p99 "
          f"{p99 * 1000:.0f} ms (budget: p99 <= 1000 ms)")
    for r in agents:
        r.stop(2.0)
    if not args.no_agent:
        print(f"a real agent with the reporter, idle: RSS {agent_rss(c, server, known, work):.1f}"
              " MiB (budget: <= 50 MiB)")


if __name__ == "__main__":
    sys.exit(main())
