"""The coordinator under a fleet's load, through the real sshd: what it holds and costs.

    python bench/coordinator.py [--agents 1000] [--seconds 60] [--heartbeat 30]

1. A coordinator in a temp dir (SQLite store; one group, max_disruptive 2) with one key
   per simulated agent (`keys add`), a private sshd on 127.0.0.1 serving them, and
   `nodewarden-coordinator serve` behind the thin sessions (--in-process: each session a
   process of its own, the design `serve` replaces, for comparison at small N).
2. N simulated agents: each an OpenSSH client process speaking the wire protocol
   (docs/protocol.md), driven from one event loop here (the agent's own Reporter is
   paramiko, one thread each; 1,000 of them in one process would measure this process,
   not the coordinator). They connect in waves, say hello and send a burst of findings.
3. Over --seconds: a heartbeat from each agent every --heartbeat seconds, spread evenly;
   messages/s the coordinator held (rows in its store), and the coordinator side's CPU
   and memory: every sshd process of the connections, every session behind them and
   serve, PSS (what they share counted once) and RSS.
4. A burst: every agent sends --burst findings at once; how long until all are answered.
5. A lease storm: every agent asks for a node-restart lease at the same instant; the
   p50/p99 decision time as the agent sees it, and how many were granted (2).
6. The agent's RSS with the reporter running: a real `nodewarden run` with
   [coordinator], idle after a restart (skip with --no-agent).

Budgets (issue 9): 1,000 agents within 2 GiB on this 2-core machine, p99 lease decision
<= 1 s, the agent <= 50 MiB with the reporter. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._proctree import cpu_ns, tree
from coordinator.store import SqliteStore
from tests.integration._coordinator import Coordinator, make_coordinator
from tests.integration._serve import Serve, running_serve
from tests.integration._sshd import Sshd, environment, running_sshd, ssh_command

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


class Agent:
    """One simulated agent: an ssh client whose stdin/stdout carry the protocol."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=environment(),
                                     bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.out, self.inp = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.inp, False)
        self.buffer = b""
        self.sent: dict[str, float] = {}
        self.replies: dict[str, dict[str, object]] = {}
        self.latency: dict[str, float] = {}
        self.n = 0

    def send(self, kind: str, **fields: object) -> str:
        self.n += 1
        msg_id = f"{self.name}-{self.n}"
        self.sent[msg_id] = time.monotonic()
        os.write(self.out, (json.dumps({"type": kind, "id": msg_id, **fields}) + "\n").encode())
        return msg_id

    def read(self) -> None:
        try:
            chunk = os.read(self.inp, 1 << 16)
        except BlockingIOError:
            return
        now = time.monotonic()
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            reply = json.loads(line)
            msg_id = str(reply.get("id"))
            self.replies[msg_id] = reply
            if msg_id in self.sent:
                self.latency[msg_id] = now - self.sent[msg_id]


class Fleet:
    def __init__(self) -> None:
        self.agents: list[Agent] = []
        self.sel = selectors.DefaultSelector()

    def add(self, agent: Agent) -> None:
        self.agents.append(agent)
        self.sel.register(agent.inp, selectors.EVENT_READ, agent)

    def pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            key.data.read()

    def wait(self, ids: list[tuple[Agent, str]], deadline_s: float) -> int:
        """Pump until every (agent, id) has its reply or the deadline; the missing."""
        end = time.monotonic() + deadline_s
        missing = ids
        while missing and time.monotonic() < end:
            self.pump(0.2)
            missing = [(a, i) for a, i in missing if i not in a.replies]
        return len(missing)


def connect(fleet: Fleet, c: Coordinator, server: Sshd, n: int, *, findings: int,
            wave: int) -> None:
    for start in range(0, n, wave):
        ids = []
        for i in range(start, min(n, start + wave)):
            agent = Agent(f"a{i}", ssh_command(server, c.keys[f"a{i}"]))
            fleet.add(agent)
            ids.append((agent, agent.send("hello", proto=1, bench=True)))
            ids += [(agent, agent.send("finding", problem="bench", subject=f"s{k}",
                                       severity="info")) for k in range(findings)]
        missing = fleet.wait(ids, 120)
        if missing:
            print(f"  wave from a{start}: {missing} replies missing")


def held(store_path: Path) -> int:
    store = SqliteStore(store_path)
    try:
        return len(store.run(lambda tx: tx.messages()))
    finally:
        store.close()


def coordinator_pids(server: Sshd, serve: Serve | None) -> tuple[list[int], list[int]]:
    """(sshd's processes and the sessions behind them, serve's)."""
    sshd = tree(int((server.log.parent / "sshd.pid").read_text()))
    return sshd, ([serve.proc.pid] if serve else [])


def steady(fleet: Fleet, args: argparse.Namespace, c: Coordinator, server: Sshd,
           serve: Serve | None) -> None:
    sshd, mine = coordinator_pids(server, serve)
    before, cpu0, t0 = held(c.store), cpu_ns(sshd + mine), time.monotonic()
    n = len(fleet.agents)
    beats = 0
    end = t0 + args.seconds
    while (now := time.monotonic()) < end:
        due = int((now - t0) / args.heartbeat * n)  # heartbeats that should have gone
        while beats < due:
            fleet.agents[beats % n].send("heartbeat", bench=True)
            beats += 1
        fleet.pump(min(0.05, max(0.0, end - now)))
    sshd, mine = coordinator_pids(server, serve)
    elapsed = time.monotonic() - t0
    cpu = (cpu_ns(sshd + mine) - cpu0) / 1e9
    fleet.pump(1.0)
    rate = (held(c.store) - before) / elapsed
    pss_sshd, rss_sshd = memory(sshd)
    pss_serve, rss_serve = memory(mine)
    pss = pss_sshd + pss_serve
    print(f"held {rate:.1f} messages/s over {elapsed:.0f} s ({beats} heartbeats, one per "
          f"agent every {args.heartbeat:g} s)")
    print(f"coordinator side: CPU {100 * cpu / elapsed:.1f}% of one core; memory PSS "
          f"{pss:.0f} MiB (sshd and sessions {len(sshd)} processes: {pss_sshd:.0f} MiB, "
          f"serve: {pss_serve:.0f} MiB), RSS {rss_sshd + rss_serve:.0f} MiB")
    print(f"  = {pss / n:.2f} MiB PSS per agent -> {pss / n * 1000 / 1024:.2f} GiB for "
          "1,000 agents (budget: 2 GiB)")


def burst(fleet: Fleet, count: int) -> None:
    t0 = time.monotonic()
    ids = [(a, a.send("finding", problem="burst", subject=f"b{k}", severity="info"))
           for a in fleet.agents for k in range(count)]
    missing = fleet.wait(ids, 300)
    took = time.monotonic() - t0
    print(f"burst: {len(ids)} findings at once ({count} per agent) answered in {took:.1f} s "
          f"= {len(ids) / took:.0f} messages/s ({missing} missing)")


def lease_storm(fleet: Fleet) -> None:
    ids = [(a, a.send("lease-request", action="node-restart", subject="host", ttl_s=600))
           for a in fleet.agents]
    missing = fleet.wait(ids, 300)
    times = sorted(a.latency[i] for a, i in ids if i in a.latency)
    granted = sum(a.replies[i].get("type") == "lease-grant" for a, i in ids
                  if i in a.replies)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"lease storm: {len(ids)} requests at once, {granted} granted (max_disruptive 2), "
          f"{missing} unanswered; decision p50 {statistics.median(times) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms (budget: p99 <= 1000 ms)")


def agent_rss(c: Coordinator, server: Sshd, work: Path) -> float:
    """A real agent with [coordinator], started twice (the second resumes: idle)."""
    config = work / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{work / "agent-state"}"\n[kmsg]\nenabled = false\n'
                      f'[coordinator]\nhost = "127.0.0.1"\nport = {server.port}\nuser = "root"\n'
                      f'key_file = "{c.keys["agent"]}"\nknown_hosts = "{server.known_hosts}"\n')
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
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--findings", type=int, default=5, help="each agent's first burst")
    parser.add_argument("--burst", type=int, default=10, help="findings per agent at once")
    parser.add_argument("--wave", type=int, default=50, help="agents connecting together")
    parser.add_argument("--in-process", action="store_true",
                        help="no serve: each session a Python process of its own")
    parser.add_argument("--no-agent", action="store_true", help="skip the agent's RSS")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two pipes per agent
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sock = "" if args.in_process else str(work / "run" / "serve.sock")
        c = make_coordinator(work / "c", [f"a{i}" for i in range(args.agents)] + ["agent"],
                             group=GROUP, max_disruptive=2, serve_socket=sock)
        with running_sshd(c.authorized_keys) as server:
            if args.in_process:
                run(args, c, server, None, work)
            else:
                with running_serve(c.config, Path(sock), work / "serve.log") as serve:
                    run(args, c, server, serve, work)
    return 0


def run(args: argparse.Namespace, c: Coordinator, server: Sshd, serve: Serve | None,
        work: Path) -> None:
    mode = "in-process sessions" if serve is None else "thin sessions handed to serve"
    fleet = Fleet()
    t0 = time.monotonic()
    connect(fleet, c, server, args.agents, findings=args.findings, wave=args.wave)
    up = sum(any(r.get("type") == "ack" for r in a.replies.values()) for a in fleet.agents)
    print(f"{up}/{args.agents} agents connected through sshd ({mode}) in "
          f"{time.monotonic() - t0:.1f} s, {args.findings} findings each")
    try:
        steady(fleet, args, c, server, serve)
        burst(fleet, args.burst)
        lease_storm(fleet)
    finally:
        for agent in fleet.agents:
            agent.proc.stdin.close()  # type: ignore[union-attr]
        for agent in fleet.agents:
            agent.proc.wait(30)
    if not args.no_agent:
        print(f"a real agent with the reporter, idle: RSS {agent_rss(c, server, work):.1f}"
              " MiB (budget: <= 50 MiB)")


if __name__ == "__main__":
    sys.exit(main())
