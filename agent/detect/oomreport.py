"""Which service an OOM kill hit, from the kernel's own OOM report, never from a name.

Anyone can name a process `reboot.target`, `sshd` or `dovecot`, raise its own
`oom_score_adj` and get it killed, and anyone with a delegated cgroup subtree
(`user@UID.service`) can name cgroups with commas and `task_memcg=` in them. So the unit
to restart after an OOM kill is read only from the report the kernel prints for the kill:

    oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,
        oom_memcg=/system.slice/dovecot.service,task_memcg=/system.slice/dovecot.service,
        task=dovecot,pid=1234,uid=109                                   (one line, 5.0+)
    Memory cgroup out of memory: Killed process 1234 (dovecot) total-vm:...

The summary line is parsed whole against the kernel's format (mm/oom_kill.c
dump_oom_summary / dump_oom_victim, kernel/cgroup/cpuset.c, mm/memcontrol.c
mem_cgroup_print_oom_context), so a separator inside a name (a comma in a cgroup, a cpuset
or a task name) makes the report ambiguous rather than splitting it differently; and a
summary long enough to have been cut by the kernel's record size is ambiguous too
(MAX_SUMMARY_BYTES: the kernel prints it in pieces, and a full record ends early). The kill
line must name the same pid, within REPORT_WINDOW_S of the summary. Only then, and only
for a task in a `.service` directly under `/system.slice/` (or a sub-slice of it:
`system-getty.slice/getty@tty1.service`) — a unit root started — is the finding
`oom-kill` with the unit as its subject, which the default ladder restarts.

Everything else is `oom-kill-no-unit`, which pages and never acts: a kill outside
system.slice (a user's session, a container), in a sub-cgroup of a service (a delegated
subtree is the service's own business), an ambiguous report, or a kill line with no report
(the kernel rate-limits the report but always prints the kill; pre-5.0 kernels print no
summary). Its subject is coarse on purpose — the slice the kill was in (`user-1000.slice`),
`ambiguous report` or `no report` — so a user who gets a hundred differently named
processes killed gets one folded page, not a hundred; the evidence still names the task.

Only kernel-printed lines reach this (the pipeline passes trusted kmsg matches); an
untrusted oom line stays an untrusted finding of its own.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Iterable
from types import MappingProxyType

from agent.model import LogLine, SignatureMatch

SUMMARY_SIGNATURE = "oom-kill.summary"
KILLED_SIGNATURE = "oom-kill.killed"
PLACED = "oom-kill"
UNPLACED = "oom-kill-no-unit"
#: the kill line follows its summary at once; a pid seen again later is another report
REPORT_WINDOW_S = 10.0
#: summaries waiting for their kill line (a bound, not a tuning knob)
MAX_PENDING = 64
#: a summary this long may have been split: the kernel ends a record that is full (992 or
#: 1024 bytes) and carries the next piece over to a new one, so a user who pads a cgroup
#: name of its own can make a record end in text it chose (`...,task_memcg=/system.slice/
#: dovecot.service,task=x,pid=N,uid=0`). A genuine summary with unit paths is a few
#: hundred characters; one this long is ambiguous.
#: in bytes, as the kernel counts its record (a character of a name may be 4 of them)
MAX_SUMMARY_BYTES = 768

_LIST = r"(?:\(null\)|[0-9,-]*)"
_SUMMARY = re.compile(
    r"oom-kill:constraint=CONSTRAINT_[A-Z_]+,nodemask=" + _LIST
    + r"(?:,cpuset=[^,]*,mems_allowed=" + _LIST + r")?"
    + r"(?:,(?:global_oom|oom_memcg=[^,]*)(?:,task_memcg=(?P<memcg>[^,]*))?)?"
    + r",task=(?P<task>[^,]*),pid=(?P<pid>\d+),uid=\d+",
    re.ASCII,
)
_KILLED = re.compile(r"(?:[A-Za-z ]+: )?Kill(?:ed)? process (?P<pid>\d+) \(", re.ASCII)
_UNIT_CHARS = r"[A-Za-z0-9][A-Za-z0-9@_.:-]*"
_SERVICE = re.compile(r"/system\.slice/(?:" + _UNIT_CHARS + r"\.slice/)*(?P<unit>"
                      + _UNIT_CHARS + r"\.service)", re.ASCII)
_USER_SLICE = re.compile(r"/user\.slice/(?P<slice>user-\d+\.slice)(?:/.*)?", re.ASCII)
_TOP = re.compile(r"/(?P<top>[A-Za-z0-9][A-Za-z0-9@_.:-]*\.slice)(?:/.*)?", re.ASCII)


@dataclasses.dataclass(frozen=True)
class Summary:
    pid: str
    memcg: str | None  # None: the report names no task cgroup (no memcg support)
    t: float


def parse_summary(text: str) -> Summary | None:
    """The summary line of an OOM report, when it has exactly the kernel's format and is
    short enough that the kernel cannot have split it (MAX_SUMMARY_BYTES)."""
    if len(text.encode("utf-8", "surrogatepass")) >= MAX_SUMMARY_BYTES:
        return None
    m = _SUMMARY.fullmatch(text)
    if m is None:
        return None
    return Summary(m.group("pid"), m.group("memcg"), 0.0)


def placement(memcg: str | None) -> tuple[str, str]:
    """(problem, subject) for a kill whose task lived in cgroup `memcg`."""
    if memcg is None:
        return UNPLACED, "no cgroup in report"
    m = _SERVICE.fullmatch(memcg)
    if m is not None:
        return PLACED, m.group("unit")
    user = _USER_SLICE.fullmatch(memcg)
    if user is not None:
        return UNPLACED, user.group("slice")
    top = _TOP.fullmatch(memcg)
    if top is not None:
        return UNPLACED, top.group("top")
    return UNPLACED, "root cgroup" if memcg == "/" else "other cgroup"


class OomReports:
    """Ties each kernel OOM kill line to the summary of its report (see the module doc)."""

    def __init__(self) -> None:
        self._pending: OrderedDict[str, Summary] = OrderedDict()

    def rewrite(self, matches: Iterable[SignatureMatch]) -> list[SignatureMatch]:
        """The matches of one trusted kernel line, with OOM kills placed: the summary is
        consumed, the kill line becomes `oom-kill UNIT` or `oom-kill-no-unit WHERE`."""
        out: list[SignatureMatch] = []
        for m in matches:
            if m.recovery or m.problem != PLACED:
                out.append(m)
            elif m.signature == SUMMARY_SIGNATURE:
                self._remember(m.line)
            elif m.signature == KILLED_SIGNATURE:
                out.append(self._place(m))
            else:
                out.append(m)
        return out

    def _when(self, line: LogLine) -> float:
        """The kernel's own time of the record when known (monotonic), else its arrival."""
        return line.monotonic_usec / 1e6 if line.monotonic_usec is not None else line.t

    def _remember(self, line: LogLine) -> None:
        summary = parse_summary(line.text)
        key = summary.pid if summary is not None else ""
        self._pending[key] = Summary(key, summary.memcg if summary else None, self._when(line))
        self._pending.move_to_end(key)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def _place(self, m: SignatureMatch) -> SignatureMatch:
        killed = _KILLED.match(m.line.text)
        pid = killed.group("pid") if killed is not None else None
        now = self._when(m.line)
        summary = self._pending.pop(pid, None) if pid is not None else None
        if summary is not None and not 0 <= now - summary.t <= REPORT_WINDOW_S:
            summary = None
        if summary is None:
            ambiguous = self._pending.pop("", None)
            if ambiguous is not None and 0 <= now - ambiguous.t <= REPORT_WINDOW_S:
                problem, subject = UNPLACED, "ambiguous report"
            else:
                problem, subject = UNPLACED, "no report"
        else:
            problem, subject = placement(summary.memcg)
        groups = {k: v for k, v in m.groups.items() if k in ("task", "pid")}
        groups["placed_in"] = subject
        return dataclasses.replace(m, problem=problem, subject=subject,
                                   groups=MappingProxyType(groups))
