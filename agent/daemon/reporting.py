"""The daemon's side of reporting to the coordinator (`[coordinator]`, docs/protocol.md).

Every event the loop emits goes to the reporter (agent/report/reporter.py), which
spools it and sends it from its own thread. A heartbeat goes every `heartbeat_s`, with
the cycle's sentence and what the spool had to drop. `reporter.json` in the state
directory is what `nodewarden status` shows of the reporter: connected, spool depth,
last ack, last error. Without `[coordinator]` this is a no-op: no thread, no paramiko.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.clock import Clock
from agent.config import Config
from agent.guards import LeaseClient

if TYPE_CHECKING:
    from agent.report.reporter import Reporter, ReporterStatus

log = logging.getLogger("nodewarden")

REPORTER_FILE = "reporter.json"
SPOOL_DIR = "spool"
#: fields of an audit record that are the agent's own bookkeeping, not for the wire (the
#: session knows the host: a message never names it)
_LOCAL = ("kind", "host", "mono")


class Reporting:
    """Events and heartbeats to the coordinator, when one is configured."""

    def __init__(self, config: Config, state_dir: Path, clock: Clock) -> None:
        self._config = config
        self._settings = config.coordinator
        self._clock = clock
        self._dir = state_dir
        self._path = state_dir / REPORTER_FILE
        self._reporter: Reporter | None = None
        self._next_beat = 0.0

    def start(self) -> None:
        """The spool and the reporter's thread (with the state directory in place)."""
        s = self._settings
        if s is None:
            return
        from agent.report.reporter import Reporter  # tenacity and the thread: only with one
        from agent.report.spool import Spool

        spool = Spool(self._dir / SPOOL_DIR, max_messages=s.spool_max_messages,
                      max_bytes=s.spool_max_bytes)
        agent = self._config.agent
        hello = {"version": _version(), "mode": agent.mode, "role": agent.role}
        self._reporter = Reporter(s, spool, hello, wall=self._clock.now)
        self._reporter.start()
        log.info("reporting to %s@%s:%d (spool %s, %d waiting)", s.user, s.host, s.port,
                 self._dir / SPOOL_DIR, spool.stats().depth)

    @property
    def enabled(self) -> bool:
        return self._reporter is not None

    @property
    def where(self) -> str | None:
        """The coordinator this agent reports to, as its leases name it ("host:port");
        None when it runs alone."""
        s = self._settings
        return None if self._reporter is None or s is None else f"{s.host}:{s.port}"

    def leases(self) -> LeaseClient | None:
        """The coordinator as the lease gate's client (None: the agent runs alone)."""
        if self._reporter is None or self._settings is None or self.where is None:
            return None
        from agent.daemon.leases import CoordinatorLeases

        return CoordinatorLeases(self._reporter, self.where, self._settings.lease_timeout_s,
                                 self._clock.now)

    def emit(self, record: Mapping[str, Any]) -> None:
        if self._reporter is not None:
            self._reporter.send(str(record["kind"]),
                                {k: v for k, v in record.items() if k not in _LOCAL})

    def status(self) -> ReporterStatus | None:
        """The reporter's state now (None: the agent runs alone)."""
        return None if self._reporter is None else self._reporter.status()

    def next_due(self) -> float | None:
        return self._next_beat if self._reporter is not None else None

    def tick(self, now: float, sentence: Callable[[], str]) -> None:
        """The heartbeat when due, and reporter.json."""
        if self._reporter is None or self._settings is None or now < self._next_beat:
            return
        self._next_beat = now + self._settings.heartbeat_s
        status = self._reporter.status()
        self._reporter.send("heartbeat", {"sentence": sentence(),
                                          "dropped": dict(status.spool.dropped)})
        self._write(status.as_json())

    def stop(self) -> None:
        if self._reporter is not None:
            self._reporter.stop()
            self._write(self._reporter.status().as_json() | {"connected": False})

    def _write(self, body: dict[str, Any]) -> None:
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        try:
            tmp.write_text(json.dumps({"t": self._clock.now(), **body}), encoding="utf-8")
            tmp.replace(self._path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self._path, exc)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nodewarden")
    except Exception:  # not installed as a distribution (a checkout on PYTHONPATH)
        return "unknown"
