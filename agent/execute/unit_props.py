"""Check that a unit's runtime resource properties are what throttle-unit set.

    python3 -m agent.execute.unit_props UNIT CPUQuota=20% IOWeight=10

Reads `systemctl show` and compares values semantically (CPUQuota=20% is shown as
CPUQuotaPerSecUSec=200ms). Exit 0 when every property matches, 1 otherwise.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping, Sequence

_SPAN = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|min|h|d)")
_USEC = {"us": 1, "ms": 1000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000,
         "d": 86_400_000_000}


def timespan_usec(text: str) -> int | None:
    """Parse systemd's timespan output ("200ms", "1.500000s", "1min 30s"); None = infinity."""
    text = text.strip()
    if text in ("", "infinity"):
        return None
    total = 0.0
    for number, unit in _SPAN.findall(text):
        total += float(number) * _USEC[unit]
    return round(total)


def expected(props: Sequence[str]) -> dict[str, str]:
    """`CPUQuota=20%` → {"CPUQuotaPerSecUSec": "200000"}; others as given."""
    out = {}
    for prop in props:
        key, _, value = prop.partition("=")
        if key == "CPUQuota":
            out["CPUQuotaPerSecUSec"] = str(int(value.rstrip("%")) * 10_000)
        else:
            out[key] = value
    return out


def mismatches(want: Mapping[str, str], shown: Mapping[str, str]) -> list[str]:
    bad = []
    for key, value in want.items():
        have = shown.get(key, "")
        if key.endswith("USec"):
            have = str(timespan_usec(have))
        if have != value:
            bad.append(f"{key}={shown.get(key, '(absent)')} (want {value})")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python3 -m agent.execute.unit_props UNIT PROP=VALUE...", file=sys.stderr)
        return 2
    unit, props = args[0], args[1:]
    want = expected(props)
    cmd = ["systemctl", "show", *(f"--property={k}" for k in want), "--", unit]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        print(proc.stderr.strip(), file=sys.stderr)
        return 1
    shown = dict(line.partition("=")[::2] for line in proc.stdout.splitlines())
    bad = mismatches(want, shown)
    if bad:
        print(f"{unit}: " + "; ".join(bad), file=sys.stderr)
        return 1
    print(f"{unit}: " + " ".join(props))
    return 0


if __name__ == "__main__":
    sys.exit(main())
