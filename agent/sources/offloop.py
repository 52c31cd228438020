"""Filesystem use and the mail-queue size: measured off the loop, read from the cache.

A hung NFS mount can block statvfs for hours and a big queue makes the queue command
take seconds, so the per-second sample never waits for either. Filesystem use runs in
a daemon thread per call (agent/sources/fsusage.py), started from the sample on its
cadence; the mail queue runs in a Periodic worker thread (only when a command is
configured). The sample reads what they last left, with its age.
"""

from __future__ import annotations

from agent.clock import Clock
from agent.sources.fsusage import FsUsage
from agent.sources.mailq import MailQueue, QueueReading
from agent.sources.periodic import Periodic
from agent.sources.settings import MetricsSettings


class OffLoop:
    """The slow measurements of one sampler. With `background=False` nothing runs on
    its own: `refresh()` measures in the caller's thread (tests, benchmarks)."""

    def __init__(
        self,
        settings: MetricsSettings,
        clock: Clock,
        *,
        background: bool,
        fs_interval_s: float,
        mailq_interval_s: float,
        fs_usage: FsUsage | None = None,
        mail_queue: MailQueue | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._background = background
        self.fs = fs_usage or FsUsage(settings.filesystems, settings.fs_timeout_s,
                                      monotonic=clock.monotonic)
        self._fs_interval_s = fs_interval_s
        self._fs_next: float | None = None
        queue = mail_queue or MailQueue(settings.mailq_command, settings.mailq_timeout_s)
        self._mailq: Periodic[QueueReading] = Periodic(
            "mailq", queue.measure, mailq_interval_s, clock)
        # a value older than this is reported stale (its worker is stuck or dead)
        self._fs_max_age = 3 * fs_interval_s + settings.fs_timeout_s + 1
        self._mailq_max_age = 3 * mailq_interval_s + settings.mailq_timeout_s + 1
        if background:
            self.tick()
            if settings.mailq_command:
                self._mailq.start()

    def tick(self) -> None:
        """Start the filesystem calls when due (returns at once; never on a hung mount)."""
        if not self._background or not self.settings.filesystems:
            return
        now = self._clock.monotonic()
        if self._fs_next is None or now >= self._fs_next:
            self.fs.start()
            self._fs_next = now + self._fs_interval_s

    def values(
        self, values: dict[str, float], reasons: dict[str, str], unavailable: set[str]
    ) -> None:
        """fs.<mount>.used_pct and mailq_size from what was last measured."""
        now = self._clock.monotonic()
        for mount, reading in self.fs.readings().items():
            name = f"fs.{mount}.used_pct"
            if reading.used_pct is None:
                why = reading.reason
            elif reading.at is not None and now - reading.at > self._fs_max_age:
                why = f"stale: last measured {now - reading.at:.0f} s ago"
            else:
                values[name] = reading.used_pct
                continue
            unavailable.add(name)
            reasons[name] = why
        no_queue = self._mailq_reason(now)
        if no_queue is None:
            cached = self._mailq.latest()
            assert cached is not None and cached[0].size is not None
            values["mailq_size"] = float(cached[0].size)
        else:
            unavailable.add("mailq_size")
            reasons["mailq_size"] = no_queue

    def _mailq_reason(self, now: float) -> str | None:
        """Why there is no mailq_size now, or None when there is one."""
        cached = self._mailq.latest()
        if not self.settings.mailq_command:
            return "metrics.mailq_command is not configured"
        if cached is None:
            return "not measured yet"
        if now - cached[1] > self._mailq_max_age:
            return f"stale: last measured {now - cached[1]:.0f} s ago"
        if cached[0].size is None:
            return cached[0].reason
        return None

    def refresh(self) -> None:
        """Measure both now, in this thread (filesystems: bounded by fs_timeout_s)."""
        if self.settings.filesystems:
            self.fs.measure()
        if self.settings.mailq_command:
            self._mailq.run_once()

    def wait_first(self, timeout_s: float) -> bool:
        """Wait until both have a first value (one-shot use); False if one has none."""
        ok = True
        if self.settings.filesystems:
            ok = self.fs.wait(timeout_s) and ok
        if self.settings.mailq_command:
            ok = self._mailq.wait_first(timeout_s) and ok
        return ok

    def close(self) -> None:
        self._mailq.stop()
        self.fs.close()
