"""One line of what the agent sees, for the operator reading its log (issue 8, part 6).

A newcomer's first run used to show nothing after "started": the kernel records it had
read came up clean, and only cycle.json said so. Now the daemon logs one line right after
start, again whenever what it sees changes (a finding fires or ends, a followed file
appears, a mount hangs, a probe starts failing: not mere counts), and every
OVERVIEW_EVERY_S while nothing changes:

    seeing: nothing firing; 341 kernel records read, 0 lines from 1 log; log mail:
    /var/log/mail.log not there yet; load1 0.40; dry-run: nothing is executed

Every 15 minutes: often enough that `journalctl -u nodewarden --since -20min` always
shows what the agent sees and that it is alive and reading (the counts move), rarely
enough to be 96 lines a day on a quiet host, far below journald's rate limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.report.text import printable

OVERVIEW_EVERY_S = 900.0
#: findings named in the line; more are counted
MAX_NAMED = 5

MODE_WORDS = {
    "dry-run": "dry-run: nothing is executed",
    "observe": "observe: nothing is planned or executed",
    "enforce": "enforce: allowed remediations run",
}


@dataclass(frozen=True)
class Seen:
    """What the agent sees now; `line()` says it, `key()` is what a change is."""

    firing: tuple[tuple[str, str, bool], ...]  # (problem, subject, trusted), sorted
    kernel_records: int
    log_lines: int
    logs: int
    problems: tuple[str, ...]  # sources not working: missing logs, hung mounts...
    probes_failing: tuple[str, ...]
    probes: int
    load1: float | None
    mode: str

    def key(self) -> tuple[object, ...]:
        return (self.firing, self.problems, self.probes_failing, self.mode)

    def line(self) -> str:
        parts = [self._findings(),
                 f"{self.kernel_records:,} kernel record{_s(self.kernel_records)} read, "
                 f"{self.log_lines:,} line{_s(self.log_lines)} from {self.logs} "
                 f"log{_s(self.logs)}"]
        parts += self.problems
        if self.probes:
            failing = (f" (failing: {', '.join(self.probes_failing)})"
                       if self.probes_failing else "")
            parts.append(f"probes {self.probes - len(self.probes_failing)}/{self.probes} "
                         f"ok{failing}")
        if self.load1 is not None:
            parts.append(f"load1 {self.load1:.2f}")
        parts.append(MODE_WORDS.get(self.mode, self.mode))
        return printable("seeing: " + "; ".join(parts))

    def _findings(self) -> str:
        if not self.firing:
            return "nothing firing"
        named = [f"{p} {s}" + ("" if trusted else " (untrusted)")
                 for p, s, trusted in self.firing[:MAX_NAMED]]
        more = len(self.firing) - len(named)
        n = len(self.firing)
        return (f"{n} finding{_s(n)} firing: {', '.join(named)}"
                + (f" and {more} more" if more else ""))


class OverviewLog:
    """Decides when the line is due: at the first call, on a change, and periodically."""

    def __init__(self, every_s: float = OVERVIEW_EVERY_S) -> None:
        self.every_s = every_s
        self._key: tuple[object, ...] | None = None
        self._at: float | None = None

    def due(self, now: float, seen: Seen) -> str | None:
        """The line to log now (monotonic `now`), or None."""
        key = seen.key()
        if self._at is not None and key == self._key and now - self._at < self.every_s:
            return None
        self._key, self._at = key, now
        return seen.line()


def _s(n: int) -> str:
    return "" if n == 1 else "s"
