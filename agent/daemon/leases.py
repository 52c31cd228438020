"""Leases from the coordinator, for the guard chain's lease gate (agent/guards/base.py
LeaseClient): the one consider path asks, renews and releases through here.

A request goes through the reporter (agent/report/reporter.py) and the caller waits for
the answer at most `lease_timeout_s`: no answer in time means no (docs/architecture.md,
safety property 2). A grant that comes later is given back by the reporter, since its
asker went on without it. A lease's end is the earlier of the coordinator's and this
host's clock's reckoning, so a clock that runs behind never stretches a lease. Each lease
names the coordinator that granted it (`granted_by`, "host:port"): a node restart's
intent keeps it, and after the boot the lease goes back only to that coordinator.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.model import Lease
from agent.report.reporter import Reporter


class CoordinatorLeases:
    """The coordinator as the guard chain's LeaseClient."""

    def __init__(self, reporter: Reporter, where: str, timeout_s: float,
                 wall: Callable[[], float]) -> None:
        self._reporter = reporter
        self._where = where
        self._timeout_s = timeout_s
        self._wall = wall
        self.last_refusal = ""

    def describe(self) -> str:
        why = f": {self.last_refusal}" if self.last_refusal else ""
        state = "" if self._reporter.connected else ", not connected"
        return f"coordinator at {self._where}{state}{why}"

    def can_grant(self) -> bool:
        return self._reporter.connected

    def acquire(self, action: str, subject: str, ttl_s: float) -> Lease | None:
        started = self._wall()
        reply = self._reporter.request("lease-request", {"action": action, "subject": subject,
                                                         "ttl_s": ttl_s}, self._timeout_s)
        return self._lease(reply, action, subject, started + ttl_s)

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        started = self._wall()
        reply = self._reporter.request("lease-renew", {"lease": int(lease.id), "ttl_s": ttl_s},
                                       self._timeout_s)
        return self._lease(reply, lease.action, lease.subject, started + ttl_s)

    def release(self, lease: Lease) -> None:
        self._reporter.send("lease-release", {"lease": int(lease.id)})

    def _lease(self, reply: object, action: str, subject: str, local_end: float
               ) -> Lease | None:
        if not isinstance(reply, dict):
            self.last_refusal = f"no answer within {self._timeout_s:g} s"
            return None
        if reply.get("type") != "lease-grant":
            self.last_refusal = str(reply.get("reason", reply.get("type")))[:300]
            return None
        lease_id, expires = reply.get("lease"), reply.get("expires")
        if isinstance(lease_id, bool) or not isinstance(lease_id, int) or \
                isinstance(expires, bool) or not isinstance(expires, int | float):
            self.last_refusal = "a grant without a lease id or an end"
            return None
        self.last_refusal = ""
        return Lease(str(lease_id), action, subject, min(float(expires), local_end),
                     self._where)
