"""The daemon's sources: a kernel log that cannot be opened leaves the others running."""

from __future__ import annotations

from pathlib import Path

from agent.clock import FakeClock
from agent.config import Config
from agent.daemon.sources import Sources
from agent.sources.settings import KmsgSettings, LogSourceSettings, MetricsSettings, UdevSettings


def test_missing_kernel_log_is_reported_and_the_other_sources_run(tmp_path: Path) -> None:
    mail = tmp_path / "mail.log"
    config = Config(
        kmsg=KmsgSettings(enabled=True, path=tmp_path / "no-kmsg"),  # e.g. a container
        logs=(LogSourceSettings("mail", mail),),
        metrics=MetricsSettings(filesystems=()),
        udev=UdevSettings(enabled=False),
    )
    sources = Sources(FakeClock(), tmp_path)
    try:
        changes = sources.apply(config)
        assert sources.kmsg is None
        assert any(c.startswith("kmsg: UNAVAILABLE: cannot open") for c in changes)
        assert set(sources.logs) == {"mail"}
        assert sources.sampler is not None
        # the next reload tries the kernel log again (and says so again)
        assert any("UNAVAILABLE" in c for c in sources.apply(config))
    finally:
        sources.close()
