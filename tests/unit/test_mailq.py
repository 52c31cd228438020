"""The mail-queue size from a configured command (agent/sources/mailq.py): every known
output format in any chunking, failures that say why, a timeout that kills the command,
and the sampler reporting what the command last counted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.sources.mailq import MailQueue, count_queue
from agent.sources.metrics import MetricsSampler
from agent.sources.settings import MetricsSettings

FIXTURES = Path(__file__).parent / "fixtures"
SYS = FIXTURES / "proc_sys"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def pid_exists(pid: int) -> bool:
    """True while the process exists, zombies included (not yet reaped)."""
    return Path(f"/proc/{pid}").exists()


POSTQUEUE_J = (
    b'{"queue_name": "deferred", "queue_id": "4F1A32", "arrival_time": 1700000000, '
    b'"message_size": 1234, "sender": "a@example.org", "recipients": [{"address": '
    b'"b@example.net", "delay_reason": "connect to mx: Connection timed out"}]}\n'
)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (POSTQUEUE_J * 3, 3),
        (b"", 0),
        (b"Mail queue is empty\n", 0),
        (b"-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
         b"4F1A32*     1234 Mon Oct 20 03:18:44  a@example.org\n"
         b"                                       b@example.net\n\n"
         b"-- 2 Kbytes in 2 Requests.\n", 2),
        (b"-- 1 Kbytes in 1 Request.\n", 1),
        (b"\t\tTotal requests: 7\n", 7),
        (b"17\n", 17),
    ],
)
def test_queue_formats_in_any_chunking(output: bytes, expected: int) -> None:
    assert count_queue([output]) == expected
    assert count_queue([output[i : i + 1] for i in range(len(output))]) == expected


def test_queue_unknown_output_is_an_error() -> None:
    with pytest.raises(ValueError, match="unrecognised"):
        count_queue([b"something else\n"])


def stand_in(tmp_path: Path, body: str) -> tuple[str, ...]:
    script = tmp_path / "postqueue.py"
    script.write_text("import sys, time\n" + body)
    return (sys.executable, str(script), "-j")


def test_mailq_command_postqueue_json_lines(tmp_path: Path) -> None:
    argv = stand_in(tmp_path, f"sys.stdout.buffer.write({POSTQUEUE_J * 4!r})\n")
    assert MailQueue(argv, 5.0).measure().size == 4


def test_mailq_command_empty_queue(tmp_path: Path) -> None:
    assert MailQueue(stand_in(tmp_path, ""), 5.0).measure().size == 0


def test_mailq_command_failure_says_why(tmp_path: Path) -> None:
    argv = stand_in(tmp_path, "sys.stderr.write('postqueue: fatal: Queue report "
                    "unavailable - mail system is down\\n')\nsys.exit(69)\n")
    reading = MailQueue(argv, 5.0).measure()
    assert reading.size is None
    assert reading.reason.endswith("exited 69: postqueue: fatal: Queue report unavailable - "
                                   "mail system is down")


def test_mailq_command_timeout_kills_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    argv = stand_in(tmp_path, f"import os\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))"
                    "\ntime.sleep(3600)\n")
    reading = MailQueue(argv, 0.5).measure()
    assert reading.size is None
    assert "timed out after 0.5 s (killed)" in reading.reason
    assert not pid_exists(int(pidfile.read_text()))


def test_mailq_missing_command() -> None:
    reading = MailQueue(("/nonexistent/postqueue", "-j"), 1.0).measure()
    assert reading.size is None
    assert reading.reason.startswith("cannot run /nonexistent/postqueue")


def test_sampler_mailq_size_from_command(tmp_path: Path, clock: FakeClock) -> None:
    argv = stand_in(tmp_path, f"sys.stdout.buffer.write({POSTQUEUE_J * 2!r})\n")
    settings = MetricsSettings(filesystems=(), mailq_command=argv)
    with MetricsSampler(settings, clock, FIXTURES / "proc_t0", SYS, background=False) as s:
        s.refresh_slow()
        assert s.sample().values["mailq_size"] == 2.0
