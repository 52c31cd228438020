"""The daemon's sources, built from the configuration and rebuilt piecewise on reload.

Each source keeps its own state (the kmsg position, a log file's offset, the previous
metrics sample for rates), so a reload rebuilds only the sources whose settings changed:
reloading to change a probe does not re-read the kernel ring or lose a log offset.
Imports of the source modules are lazy: `nodewarden --help` does not pay for pyudev.

A kernel log or device monitor that cannot be opened is tried again on a backoff
(agent/daemon/reopen.py), and at every reload. A followed log file that does not exist
is a warning at start and at reload (`warnings()`), and is read from its beginning when
it appears; `problems()` says what is not working now, for the daemon's overview line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.clock import Clock
from agent.config import Config
from agent.daemon.reopen import Reopen
from agent.sources.settings import KmsgSettings, LogSourceSettings, MetricsSettings, ProbeSettings

if TYPE_CHECKING:
    from agent.sources.kmsg import KmsgFollower
    from agent.sources.logfile import LogFileFollower
    from agent.sources.metrics import MetricsSampler
    from agent.sources.probescheduler import ProbeScheduler

log = logging.getLogger(__name__)

KMSG_POSITION_FILE = "kmsg-position.json"


@dataclass
class Sources:
    """Every live source; `None` / empty for those the configuration turns off."""

    clock: Clock
    state_dir: Path
    kmsg: KmsgFollower | None = None
    kmsg_settings: KmsgSettings | None = None
    logs: dict[str, LogFileFollower] = field(default_factory=dict)
    log_settings: dict[str, LogSourceSettings] = field(default_factory=dict)
    sampler: MetricsSampler | None = None
    metrics_settings: MetricsSettings | None = None
    udev: Any = None
    udev_enabled: bool = False
    probes: ProbeScheduler | None = None
    probe_settings: tuple[ProbeSettings, ...] = ()
    #: sources that failed to open, by name ("kmsg", "udev"): when to try again, and why
    retries: dict[str, tuple[Reopen, str]] = field(default_factory=dict)

    def apply(self, config: Config) -> list[str]:
        """Bring the sources in line with `config`; returns a sentence per change."""
        changes: list[str] = []
        self._apply_kmsg(config.kmsg, changes)
        self._apply_logs(config.logs, changes)
        self._apply_metrics(config.metrics, changes)
        self._apply_udev(config.udev.enabled, changes)
        self._apply_probes(config.probes, changes)
        return changes

    # ------------------------------------------------------------------ kmsg
    def _apply_kmsg(self, settings: KmsgSettings, changes: list[str]) -> None:
        if settings == self.kmsg_settings and (self.kmsg is not None) == settings.enabled:
            return
        if self.kmsg is not None:
            self.kmsg.close(save=True)
            self.kmsg = None
        self.kmsg_settings = settings
        self.retries.pop("kmsg", None)
        if settings.enabled:
            self._open_kmsg(changes)
        else:
            changes.append("kmsg: off")

    def _open_kmsg(self, changes: list[str]) -> None:
        from agent.sources.kmsg import KmsgFollower

        assert self.kmsg_settings is not None
        path = self.kmsg_settings.path
        try:
            self.kmsg = KmsgFollower(self.state_dir / KMSG_POSITION_FILE, self.clock,
                                     device_path=path)
        except OSError as exc:
            # no kernel log (a container without /dev/kmsg): say so, keep every other
            # source; tried again on a backoff and at the next reload
            self._failed("kmsg", exc, f"cannot open {path}: {exc.strerror or exc}", changes)
            return
        self._opened("kmsg")
        how = (
            f"resuming after seq {self.kmsg.last_seq}" if self.kmsg.resumed
            else "reading the whole ring (no position for this boot)"
        )
        changes.append(f"kmsg: following {path}, {how}")

    def _failed(self, name: str, exc: OSError, why: str, changes: list[str]) -> None:
        retry, _ = self.retries.get(name) or (Reopen(), "")
        wait = retry.failed(self.clock.monotonic(), exc)
        self.retries[name] = (retry, why)
        changes.append(f"{name}: UNAVAILABLE: {why} (trying again in {wait:.0f} s)")

    def _opened(self, name: str) -> None:
        self.retries.pop(name, None)

    def reopen_due(self) -> list[str]:
        """Try again the sources whose retry is due; a sentence per attempt."""
        changes: list[str] = []
        now = self.clock.monotonic()
        for name, (retry, _) in list(self.retries.items()):
            if not retry.due(now):
                continue
            if name == "kmsg" and self.kmsg is None:
                self._open_kmsg(changes)
            elif name == "udev" and self.udev is None:
                self._open_udev(changes)
        return changes

    # ------------------------------------------------------------------ log files
    def _apply_logs(self, wanted: tuple[LogSourceSettings, ...], changes: list[str]) -> None:
        from agent.sources.logfile import LogFileFollower

        by_name = {s.name: s for s in wanted}
        for name in list(self.logs):
            if by_name.get(name) != self.log_settings.get(name):
                self.logs.pop(name).close()
                self.log_settings.pop(name)
                if name not in by_name:
                    changes.append(f"log:{name}: no longer followed")
        for name, s in by_name.items():
            if name in self.logs:
                continue
            follower = LogFileFollower(name, s.path, s.max_line_bytes, self.clock)
            self.logs[name] = follower
            self.log_settings[name] = s
            changes.append(f"log:{name}: following {s.path}" if follower.stats().open
                           else f"log:{name}: will follow {s.path} once it exists")

    # ------------------------------------------------------------------ metrics
    def _apply_metrics(self, settings: MetricsSettings, changes: list[str]) -> None:
        if settings == self.metrics_settings and self.sampler is not None:
            return
        from agent.sources.metrics import MetricsSampler

        if self.sampler is not None:
            self.sampler.close()
        self.sampler = MetricsSampler(settings, self.clock)
        self.metrics_settings = settings
        changes.append("metrics: sampler (re)built")

    # ------------------------------------------------------------------ udev
    def _apply_udev(self, enabled: bool, changes: list[str]) -> None:
        if enabled == self.udev_enabled and (self.udev is not None) == enabled:
            return
        self._close_udev()
        self.udev_enabled = enabled
        self.retries.pop("udev", None)
        if enabled:
            self._open_udev(changes)
        else:
            changes.append("udev: off")

    def _open_udev(self, changes: list[str]) -> None:
        from agent.sources.udev import UdevMonitor

        try:
            self.udev = UdevMonitor(self.clock)
        except OSError as exc:  # no netlink here (a restricted container)
            self._failed("udev", exc, f"cannot watch devices: {exc.strerror or exc}",
                         changes)
            return
        self._opened("udev")
        changes.append("udev: watching block devices")

    def _close_udev(self) -> None:
        if self.udev is not None:
            close = getattr(self.udev, "close", None)
            if close is not None:
                close()
            self.udev = None

    # ------------------------------------------------------------------ probes
    def _apply_probes(self, wanted: tuple[ProbeSettings, ...], changes: list[str]) -> None:
        if wanted == self.probe_settings and (self.probes is not None) == bool(wanted):
            return
        if self.probes is not None:
            self.probes.close()
            self.probes = None
        self.probe_settings = wanted
        if wanted:
            from agent.sources.probescheduler import ProbeScheduler

            self.probes = ProbeScheduler(wanted, self.clock)
            changes.append(f"probes: {', '.join(p.name for p in wanted)}")
        else:
            changes.append("probes: none")

    # ------------------------------------------------------------------ what is wrong
    def warnings(self) -> list[str]:
        """Followed files that cannot be read now (said at start and at each reload)."""
        out = []
        for name, follower in self.logs.items():
            stats = follower.stats()
            if stats.open:
                continue
            if stats.error:
                out.append(f"log:{name}: {stats.error}: tried again every sample")
            else:
                out.append(f"log:{name}: {stats.path} does not exist: it will be read from "
                           "its beginning when it appears")
        return out

    def problems(self) -> list[str]:
        """What does not work now, in a few words each (the overview line)."""
        out = [f"{name} unavailable ({why})" for name, (_, why) in self.retries.items()]
        for name, follower in self.logs.items():
            stats = follower.stats()
            if not stats.open:
                out.append(f"log {name}: {stats.path} "
                           + ("unreadable" if stats.error else "not there yet"))
        if self.sampler is not None:
            for mount, reading in self.sampler.fs_usage.readings().items():
                if reading.reason.startswith("hung: "):
                    out.append(f"filesystem {mount} hung")
        return out

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        if self.kmsg is not None:
            self.kmsg.close(save=True)
            self.kmsg = None
        for follower in self.logs.values():
            follower.close()
        self.logs.clear()
        self._close_udev()
        if self.probes is not None:
            self.probes.close()
            self.probes = None
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None
