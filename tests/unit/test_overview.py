"""The daemon's overview line (agent/daemon/overview.py) and when it is logged: at the
first call, on a change of what it sees (not of mere counts), and every every_s."""

from __future__ import annotations

import dataclasses

from agent.daemon.overview import OverviewLog, Seen

QUIET = Seen(firing=(), kernel_records=341, log_lines=0, logs=1,
             problems=("log mail: /var/log/mail.log not there yet",), probes_failing=(),
             probes=0, load1=0.4, mode="dry-run")


def test_a_quiet_first_run_says_what_it_read_and_what_is_missing() -> None:
    assert QUIET.line() == (
        "seeing: nothing firing; 341 kernel records read, 0 lines from 1 log; log mail: "
        "/var/log/mail.log not there yet; load1 0.40; dry-run: nothing is executed")


def test_findings_are_named_untrusted_marked_and_the_rest_counted() -> None:
    firing = tuple(("hung-task", f"t{i}", i != 0) for i in range(7))
    seen = dataclasses.replace(QUIET, firing=firing, problems=(), probes=3,
                               probes_failing=("imap",), kernel_records=1, log_lines=1)
    line = seen.line()
    assert line.startswith("seeing: 7 findings firing: hung-task t0 (untrusted), "
                           "hung-task t1, hung-task t2, hung-task t3, hung-task t4 and 2 more; "
                           "1 kernel record read, 1 line from 1 log; probes 2/3 ok "
                           "(failing: imap); ")


def test_text_of_others_is_printed_escaped() -> None:
    seen = dataclasses.replace(QUIET, firing=(("hung-task", "evil\x1b[2Kname", False),))
    assert "evil\\x1b[2Kname" in seen.line()


def test_logged_first_then_on_a_change_then_every_period() -> None:
    log = OverviewLog(every_s=900.0)
    assert log.due(0.0, QUIET) == QUIET.line()
    more = dataclasses.replace(QUIET, kernel_records=400, log_lines=12, load1=3.0)
    assert log.due(10.0, more) is None  # counts and load are no change
    appeared = dataclasses.replace(more, problems=())
    assert log.due(20.0, appeared) == appeared.line()  # the mail log appeared
    assert log.due(900.0, appeared) is None
    assert log.due(920.0, appeared) == appeared.line()  # 15 min after the last line
    fired = dataclasses.replace(appeared, firing=(("auth-flood", "192.0.2.7", True),))
    assert log.due(921.0, fired) is not None
    assert log.due(922.0, dataclasses.replace(fired, mode="enforce")) is not None
