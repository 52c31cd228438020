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


def test_a_kernel_log_that_appears_later_is_opened_on_the_backoff(tmp_path: Path) -> None:
    """tenacity's schedule (1 s, then doubling), driven by the caller's clock: nothing
    sleeps, and no reload is needed."""
    clock = FakeClock()
    kmsg = tmp_path / "kmsg"
    config = Config(kmsg=KmsgSettings(enabled=True, path=kmsg), logs=(),
                    metrics=MetricsSettings(filesystems=()), udev=UdevSettings(enabled=False))
    sources = Sources(clock, tmp_path)
    try:
        changes = sources.apply(config)
        assert any("UNAVAILABLE" in c and "trying again in " in c for c in changes)
        assert sources.problems()[0].startswith("kmsg unavailable (cannot open ")
        assert sources.reopen_due() == []  # not due yet
        clock.advance(2.1)  # first retry: 1 s plus up to 1 s of jitter
        assert any("UNAVAILABLE" in c for c in sources.reopen_due())
        retry, _ = sources.retries["kmsg"]
        assert retry.attempts == 2
        kmsg.write_bytes(b"")  # the device is there now
        clock.advance(4.0)  # second retry: 2 s plus jitter
        assert [c.split(",")[0] for c in sources.reopen_due()] == [f"kmsg: following {kmsg}"]
        assert sources.kmsg is not None
        assert sources.retries == {}
        assert sources.problems() == []
    finally:
        sources.close()


def test_a_missing_followed_file_is_a_warning_until_it_appears(tmp_path: Path) -> None:
    mail = tmp_path / "mail.log"
    config = Config(kmsg=KmsgSettings(enabled=False), logs=(LogSourceSettings("mail", mail),),
                    metrics=MetricsSettings(filesystems=()), udev=UdevSettings(enabled=False))
    sources = Sources(FakeClock(), tmp_path)
    try:
        assert f"log:mail: will follow {mail} once it exists" in sources.apply(config)
        assert sources.warnings() == [f"log:mail: {mail} does not exist: it will be read from "
                                      "its beginning when it appears"]
        assert sources.problems() == [f"log mail: {mail} not there yet"]
        mail.write_text("Nov 25 13:00:00 mx1 postfix/qmgr[11]: 4F2A: removed\n")
        assert len(sources.logs["mail"].poll()) == 1  # read from its beginning
        assert sources.warnings() == []
        assert sources.problems() == []
    finally:
        sources.close()
