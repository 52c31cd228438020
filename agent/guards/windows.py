"""Maintenance windows for disruptive actions: "DAYS HH:MM-HH:MM", in UTC.

DAYS is `daily`, a day (`Sat`), a list (`Sat,Sun`) or a range (`Mon-Fri`); days are
Mon Tue Wed Thu Fri Sat Sun. The end may be earlier than the start: the window then runs
past midnight into the next day (`Sun 23:00-01:00` is Sunday 23:00 to Monday 01:00), and
belongs to the day it starts on. `24:00` is allowed as an end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FORM = re.compile(r"^\s*(\S+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    text: str
    days: frozenset[int]  # 0 = Monday
    start_min: int
    end_min: int

    def contains(self, t: float) -> bool:
        tm = time.gmtime(t)
        day, minute = tm.tm_wday, tm.tm_hour * 60 + tm.tm_min
        if self.start_min < self.end_min:
            return day in self.days and self.start_min <= minute < self.end_min
        return (day in self.days and minute >= self.start_min) or (
            (day - 1) % 7 in self.days and minute < self.end_min
        )


def _days(spec: str) -> frozenset[int]:
    spec = spec.lower()
    if spec in ("daily", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"unknown day in {part!r}; days are Mon..Sun or daily")
        a, b = DAYS.index(first), DAYS.index(last or first)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(out)


def parse_window(text: str) -> Window:
    """ValueError with the reason when `text` is not "DAYS HH:MM-HH:MM"."""
    m = _FORM.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not \"DAYS HH:MM-HH:MM\" (e.g. \"Sat 02:00-05:00\")")
    sh, sm, eh, em = (int(x) for x in m.group(2, 3, 4, 5))
    if sh > 23 or sm > 59 or em > 59 or eh > 24 or (eh == 24 and em):
        raise ValueError(f"{text!r} has a time out of range")
    start, end = sh * 60 + sm, eh * 60 + em
    if start == end:
        raise ValueError(f"{text!r} is empty (start = end)")
    return Window(text.strip(), _days(m.group(1)), start, end)


def describe_windows(windows: Sequence[Window]) -> str:
    return ", ".join(w.text for w in windows)
