"""An agent's reporter in a process of its own, for the fault tests: `python -m
tests.integration._reporter_proc SETTINGS.json SPOOL_DIR COUNT` spools COUNT findings
(`n` = 0..COUNT-1), starts the reporter and prints `drained` once the spool is empty.
The tests SIGKILL it mid-send and start it again on the same spool."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from agent.report.reporter import Reporter
from agent.report.settings import ReporterSettings
from agent.report.spool import Spool


def main() -> int:
    raw = json.loads(Path(sys.argv[1]).read_text())
    settings = ReporterSettings(**{**raw, "key_file": Path(raw["key_file"]),
                                   "known_hosts": Path(raw["known_hosts"])})
    spool = Spool(Path(sys.argv[2]))
    reporter = Reporter(settings, spool, {"version": "test"})
    for n in range(int(sys.argv[3])):
        reporter.send("finding", {"problem": "test", "subject": "x", "n": n})
    reporter.start()
    done = threading.Event()
    while not done.wait(0.05):
        if reporter.status().spool.depth == 0:
            print("drained", flush=True)
            done.set()
    reporter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
