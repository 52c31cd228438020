"""Programs the fleet test runs inside its network namespaces (`ip netns exec NS python -m
tests.integration._fleet_procs ...`):

* `webhook FILE`: an HTTP receiver for the coordinator's webhook notifier, on the
  namespace's 127.0.0.1 (a port the kernel picks, printed as `ready PORT`). Each POST's
  body is appended to FILE as one line and answered 200: what a person's pager got.
* `lease CONFIG SPOOL ACTION SUBJECT PROBLEM`: a host asks for a disruptive lease the way
  its agent does: the agent's `[coordinator]` settings from CONFIG (its key, the pinned
  host key), the reporter over SSH and the guard chain's lease gate
  (agent/guards/costly.py LeaseGuard with agent/daemon/leases.py CoordinatorLeases).
  Prints `{"allow": …, "reason": …}`; a granted lease is released before it exits.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from agent.daemon.leases import CoordinatorLeases
from agent.guards.costly import LeaseGuard
from agent.model import Proposal
from agent.report.reporter import Reporter
from agent.report.settings import parse_reporter
from agent.report.spool import Spool
from agent.schema import ConfigError, Section
from tests.integration._wait import poll

CONNECT_S = 30.0


def webhook(out: Path) -> int:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with out.open("ab") as f:
                f.write(body.replace(b"\n", b" ") + b"\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


def lease(config: Path, spool: Path, action: str, subject: str, problem: str) -> int:
    errors: list[ConfigError] = []
    raw = tomllib.loads(config.read_text())
    settings = parse_reporter(Section(raw, str(config), "", errors).table("coordinator"))
    assert settings is not None and not errors, errors
    reporter = Reporter(settings, Spool(spool), {"version": "fleet-test", "mode": "lease"})
    reporter.start()
    try:
        if not poll(lambda: reporter.connected or None, CONNECT_S):
            print(json.dumps({"allow": False, "reason": "never connected"}), flush=True)
            return 1
        client = CoordinatorLeases(reporter, f"{settings.host}:{settings.port}",
                                   settings.lease_timeout_s, time.time)
        gate = LeaseGuard(client, 600)
        verdict, granted = gate.acquire(
            Proposal(action, subject, problem, disruptive=True), time.time())
        if granted is not None:
            gate.release(granted)  # spooled: it reaches the store before we go
            poll(lambda: reporter.status().spool.depth == 0 or None, CONNECT_S)
        print(json.dumps({"allow": verdict.allow, "reason": verdict.reason}), flush=True)
        return 0
    finally:
        reporter.stop()


def main() -> int:
    if sys.argv[1] == "webhook":
        return webhook(Path(sys.argv[2]))
    config, spool, action, subject, problem = sys.argv[2:7]
    return lease(Path(config), Path(spool), action, subject, problem)


if __name__ == "__main__":
    sys.exit(main())
