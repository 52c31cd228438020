"""Durations as operators write them: '90', '90s', '15m', '2h', '1d' (one parser for the
command line and for remediation parameters)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d{1,9}(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
EXAMPLES = "90s, 15m, 2h or 1d"


def parse_duration(text: str) -> float | None:
    """Seconds, or None when `text` is not a duration (negative ones are not)."""
    m = _DURATION.match(text)
    return None if m is None else float(m.group(1)) * _UNIT_S[m.group(2)]
