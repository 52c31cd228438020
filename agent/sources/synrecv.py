"""Half-open (SYN_RECV) connections per listening port and remote address, read only
under SYN pressure (`tcp_synrecv.<port>.<address>`, agent/sources/metricspec.py).

/proc/net/tcp and tcp6 hold one ~150-byte line per socket: on a flooded server they are
megabytes, so they are read only while the same sample shows SYN pressure (and while an
address reported before still lingers), at most every SYNRECV_INTERVAL_S and at most
`max_bytes` of them per scan.
"""

from __future__ import annotations

from agent.clock import Clock
from agent.sources import procfs
from agent.sources.metricspec import (
    SYNRECV_INTERVAL_S,
    SYNRECV_LINGER_S,
    SYNRECV_MIN,
    SYNRECV_TOP_N,
)

#: any of these above 0 in a sample is SYN pressure: then the half-open scan runs
SYN_PRESSURE = ("tcp_syncookies_sent_per_s", "tcp_listen_overflows_per_s",
                "tcp_listen_drops_per_s")
FAMILY = "tcp_synrecv.<port>.<address>"

Key = tuple[int, str]


class SynRecvScan:
    """Counts half-open connections; keeps what it reported for SYNRECV_LINGER_S."""

    def __init__(self, proc_root: str, clock: Clock, max_bytes: int) -> None:
        self._paths = (f"{proc_root}/net/tcp", f"{proc_root}/net/tcp6")
        self._clock = clock
        self.max_bytes = max_bytes
        self._seen: dict[Key, float] = {}
        self._last: tuple[float, dict[str, float], dict[str, str]] | None = None

    def values(
        self, values: dict[str, float], reasons: dict[str, str], unavailable: set[str]
    ) -> dict[str, str]:
        """Adds tcp_synrecv.* to `values`; returns notes for a scan cut at the bound.

        Costs one dict lookup per pressure counter while there is no SYN pressure and no
        address lingers: the tables are read only during (and just after) a flood.
        """
        if not self._seen and not any(values.get(n, 0.0) > 0 for n in SYN_PRESSURE):
            return {}
        now = self._clock.monotonic()
        cached = self._last
        if cached is not None and now - cached[0] < SYNRECV_INTERVAL_S:
            # a flood's table can be megabytes (1-15 ms to read): every few seconds is
            # enough for a rule that wants it sustained; between scans, the last values
            values.update(cached[1])
            return dict(cached[2])
        counts, truncated, errors = self._count()
        if errors is not None:
            unavailable.add(FAMILY)
            reasons[FAMILY] = errors
        for key in procfs.top_per_port(counts, SYNRECV_TOP_N, SYNRECV_MIN):
            self._seen[key] = now
        notes: dict[str, str] = {}
        found: dict[str, float] = {}
        for key, last in list(self._seen.items()):
            if now - last > SYNRECV_LINGER_S:
                del self._seen[key]
                continue
            name = f"tcp_synrecv.{key[0]}.{key[1]}"
            found[name] = float(counts.get(key, 0))
            if truncated:
                notes[name] = (f"counted in the first {self.max_bytes} bytes of "
                               "/proc/net/tcp and tcp6 only (more sockets than that)")
        values.update(found)
        self._last = (now, found, notes) if errors is None else None
        return notes

    def _count(self) -> tuple[dict[Key, int], bool, str | None]:
        """(counts, cut at the bound, why nothing could be read or None)."""
        counts: dict[Key, int] = {}
        budget, truncated, read_any = self.max_bytes, False, False
        errors: list[str] = []
        for path in self._paths:
            if budget <= 0:
                truncated = True
                break
            try:
                text, cut = procfs.read_bounded(path, budget)
            except FileNotFoundError:
                continue  # no tcp6 on a host without IPv6
            except OSError as exc:
                errors.append(f"{path}: {exc}")
                continue
            read_any = True
            budget -= len(text)
            truncated = truncated or cut
            procfs.count_synrecv(text, counts)
        if read_any:
            return counts, truncated, None
        return counts, truncated, "; ".join(errors) or "no /proc/net/tcp or tcp6"
