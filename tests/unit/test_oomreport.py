"""An OOM kill's service comes from the kernel's own report, tied to the killed pid; a
process name or a user's cgroup never names a unit (issue 7)."""

from __future__ import annotations

import pytest

from agent.detect.oomreport import OomReports, parse_summary, placement
from agent.model import LogLine, SignatureMatch

SUMMARY = ("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
           "oom_memcg={memcg},task_memcg={memcg},task={task},pid={pid},uid=109")
KILLED = ("Memory cgroup out of memory: Killed process {pid} ({task}) total-vm:43040kB, "
          "anon-rss:32384kB, file-rss:6656kB, shmem-rss:0kB, UID:109 pgtables:120kB "
          "oom_score_adj:0")


@pytest.mark.parametrize(("line", "pid", "memcg"), [
    (SUMMARY.format(memcg="/system.slice/dovecot.service", task="dovecot", pid=1234),
     "1234", "/system.slice/dovecot.service"),
    ("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
     "task_memcg=/system.slice/rspamd.service,task=rspamd,pid=42,uid=110", "42",
     "/system.slice/rspamd.service"),
    ("oom-kill:constraint=CONSTRAINT_NONE,nodemask=0-1,cpuset=/,mems_allowed=0,2,global_oom,"
     "task_memcg=/user.slice/user-1000.slice/session-3.scope,task=stress,pid=7,uid=1000",
     "7", "/user.slice/user-1000.slice/session-3.scope"),
    ("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),global_oom,"  # no CONFIG_CPUSETS
     "task_memcg=/system.slice/x.service,task=x,pid=9,uid=0", "9", "/system.slice/x.service"),
    ("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"  # no memcg
     "task=x,pid=9,uid=0", "9", None),
])
def test_the_summary_is_parsed_in_the_kernels_format(line: str, pid: str,
                                                     memcg: str | None) -> None:
    s = parse_summary(line)
    assert s is not None and (s.pid, s.memcg) == (pid, memcg)


@pytest.mark.parametrize("line", [
    # a cgroup a user named under its own delegated subtree, to smuggle a second field
    SUMMARY.format(memcg="/user.slice/user-1000.slice/user@1000.service/x,task_memcg="
                   "/system.slice/ssh.service", task="evil", pid=5),
    # a task name with a separator in it
    SUMMARY.format(memcg="/system.slice/dovecot.service", task="a,pid=1", pid=5),
    # a cpuset (the allocating task's) with a comma
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=a,task_memcg=/system.slice/"
    "ssh.service,mems_allowed=0,global_oom,task_memcg=/user.slice,task=x,pid=5,uid=0",
    # a report split by a concurrent printk (pr_cont)
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom",
    # a record the kernel ended because it was full: the user padded its own oom_memcg so
    # that the record ends in text it chose (the real `,task_memcg=` went to a new record)
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/user.slice/user-1000.slice/user@1000.service/" + "p" * 800
    + "/a,task_memcg=/system.slice/dovecot.service,task=x,pid=5,uid=0",
    # the same padding in 3-byte characters: 456 characters, but 976 bytes of record
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/user.slice/user-1000.slice/user@1000.service/" + "\u20ac" * 260
    + ",task_memcg=/system.slice/dovecot.service,task=x,pid=5,uid=0",
])
def test_a_summary_with_a_separator_inside_a_name_is_not_parsed(line: str) -> None:
    assert parse_summary(line) is None


@pytest.mark.parametrize(("memcg", "problem", "subject"), [
    ("/system.slice/dovecot.service", "oom-kill", "dovecot.service"),
    ("/system.slice/system-getty.slice/getty@tty1.service", "oom-kill", "getty@tty1.service"),
    ("/system.slice/docker-0a1b.scope", "oom-kill-no-unit", "system.slice"),
    ("/system.slice/containerd.service/k8s/pod1", "oom-kill-no-unit", "system.slice"),
    ("/user.slice/user-1000.slice/session-4.scope", "oom-kill-no-unit", "user-1000.slice"),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/reboot.target",
     "oom-kill-no-unit", "user-1000.slice"),
    ("/machine.slice/machine-web.scope/payload/system.slice/x.service", "oom-kill-no-unit",
     "machine.slice"),
    ("/", "oom-kill-no-unit", "root cgroup"),
    ("/lxc.payload.c1/system.slice/x.service", "oom-kill-no-unit", "other cgroup"),
    (None, "oom-kill-no-unit", "no cgroup in report"),
])
def test_placement(memcg: str | None, problem: str, subject: str) -> None:
    assert placement(memcg) == (problem, subject)


def match(sig: str, text: str, t: float) -> SignatureMatch:
    line = LogLine(source="kmsg", text=text, t=t, facility=0,
                   monotonic_usec=int(t * 1e6))
    return SignatureMatch(signature=sig, problem="oom-kill", subject="ignored",
                          severity="error", line=line)


def kill(reports: OomReports, memcg: str, task: str, pid: int, t: float = 100.0,
         killed_pid: int | None = None, gap: float = 0.001) -> tuple[str, str]:
    assert reports.rewrite([match("oom-kill.summary",
                                  SUMMARY.format(memcg=memcg, task=task, pid=pid), t)]) == []
    [m] = reports.rewrite([match("oom-kill.killed", KILLED.format(
        pid=pid if killed_pid is None else killed_pid, task=task), t + gap)])
    assert m.groups["placed_in"] == m.subject
    return m.problem, m.subject


def test_a_process_named_like_a_unit_is_paged_about_never_restarted() -> None:
    reports = OomReports()
    for name in ("reboot.target", "poweroff.target", "ssh.socket", "nodewarden",
                 "keepalived", "dovecot"):
        assert kill(reports, "/user.slice/user-1000.slice/session-4.scope", name, 4242) == (
            "oom-kill-no-unit", "user-1000.slice")


def test_a_service_in_system_slice_is_placed_by_its_cgroup_not_its_name() -> None:
    reports = OomReports()
    # the task is called "reboot.target" but lives in dovecot.service: dovecot it is
    assert kill(reports, "/system.slice/dovecot.service", "reboot.target", 1234) == (
        "oom-kill", "dovecot.service")


def test_the_kill_line_must_name_the_reports_pid() -> None:
    reports = OomReports()
    assert kill(reports, "/system.slice/dovecot.service", "dovecot", 1234, killed_pid=999) == (
        "oom-kill-no-unit", "no report")


def test_a_kill_line_with_no_report_pages() -> None:
    """The kernel rate-limits the report but always prints the kill (and 4.19 prints no
    summary at all)."""
    [m] = OomReports().rewrite([match("oom-kill.killed", KILLED.format(pid=7, task="x"), 5)])
    assert (m.problem, m.subject) == ("oom-kill-no-unit", "no report")


def test_a_summary_too_long_before_its_kill_is_another_report() -> None:
    reports = OomReports()
    assert kill(reports, "/system.slice/dovecot.service", "dovecot", 1234, gap=60.0) == (
        "oom-kill-no-unit", "no report")


def test_an_ambiguous_report_pages() -> None:
    reports = OomReports()
    bad = SUMMARY.format(memcg="/user.slice/x,task_memcg=/system.slice/ssh.service",
                         task="evil", pid=5)
    assert reports.rewrite([match("oom-kill.summary", bad, 10.0)]) == []
    [m] = reports.rewrite([match("oom-kill.killed", KILLED.format(pid=5, task="evil"), 10.0)])
    assert (m.problem, m.subject) == ("oom-kill-no-unit", "ambiguous report")
