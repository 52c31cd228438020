"""Benchmark the signature matcher over a generated 1,000,000-line kernel log.

Prints lines/s (median of --runs runs, the functions taking turns run by run) for:
  floor      read the file in blocks and split the lines: the baseline of the budgets
             since issue 3 (kept, so the ratios stay comparable)
  counted    read the file in blocks of lines, as scan now does before matching (a clean
             block is only counted, not split: LineBlocks.lazy); printed, not budgeted
  naive      floor + decode each line + every signature's compiled regex .search on it
  hyperscan  `nodewarden scan`'s own loop (agent.detect.scanner.scan_stream), hyperscan engine
  portable   the same loop with the portable Aho-Corasick engine
  per-line   floor + decode + parse_line + Matcher.match per line (the daemon's kmsg path)
and the ratios matcher/naive (of the medians) and matcher/floor (the median of the ratios of
side-by-side runs: this machine's speed drifts by 2x within a minute). Budgets: the
matcher (hyperscan) >= 20x naive and >= 25% of the floor (issue 3); the portable engine
(the fallback where no hyperscan wheel exists) >= 15% of the floor (issue 8). Whole
processes (start-up, end to end) are bench/scan_cli.py's. Figures, never pass/fail: the
exit code is 0 either way.

Usage: python bench/scan.py [--lines N] [--trouble-pct P] [--runs R] [--skip-naive]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# `python bench/scan.py` from anywhere measures this checkout's code (not an installed one)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.detect.catalog import MAX_MATCH_CHARS, Catalog, load_catalog
from agent.detect.hsdb import BLOCK, LINE
from agent.detect.matcher import Matcher
from agent.detect.scanner import LineBlocks, ScanStats, scan_stream
from agent.sources.lineformat import parse_line

BENIGN = (  # real dmesg lines, long by nature
    "usb 1-1.{a}: new high-speed USB device number {b} using xhci_hcd",
    "EXT4-fs (sda{a}): mounted filesystem with ordered data mode. Opts: errors=remount-ro",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth{a}: link becomes ready",
    "audit: type=1400 audit({b}.{c}:{a}): apparmor=\"ALLOWED\" operation=\"open\" profile=\"/usr/sbin/dovecot\" name=\"/var/mail/u{b}\" pid={c}",  # noqa: E501
    "NFSD: Using nfsdcld client tracking operations.",
    "sd {a}:0:0:0: [sd{l}] Write cache: enabled, read cache: enabled, doesn't support DPO or FUA",
    "systemd-journald[{b}]: Data hash table of /var/log/journal/{c}/system.journal has a fill level at 75.0",  # noqa: E501
    "device eth{a} entered promiscuous mode",
    "TCP: request_sock_TCP: Possible SYN flooding on port {b}. Sending cookies.  Check SNMP counters.",  # noqa: E501
    "perf: interrupt took too long ({b} > {c}), lowering kernel.perf_event_max_sample_rate to {a}000",  # noqa: E501
    "xfs filesystem being remounted at /srv/mail{a} supports timestamps until 2038 (0x7fffffff)",
    "EDAC MC: Ver: 3.0.0",
    "mce: CPU{a}: Thermal monitoring enabled (TM1)",
    "MDS CPU bug present and SMT on, data leak possible. See https://www.kernel.org/doc/html/latest/admin-guide/hw-vuln/mds.html for more details.",  # noqa: E501
    "Process accounting resumed",
    "bond0: (slave eth{a}): Enslaving as a backup interface with an up link",
    "kauditd_printk_skb: {b} callbacks suppressed",
    "nf_conntrack: default automatic helper assignment has been turned off for security reasons",
    "raid6: avx2x4   gen() {b} MB/s",
    "ata{a}: SATA link up 6.0 Gbps (SStatus 133 SControl 300)",
)


def generate(path: Path, n: int, trouble_pct: float, catalog: Catalog, seed: int = 1, *,
             unique: bool = False) -> int:
    """Write n dmesg-style lines, ~trouble_pct % drawn from the kernel examples. `unique`:
    every digit of a trouble line's message is drawn anew (a sector, a pid, an address),
    so its messages rarely repeat and scan's memo of repeated messages rarely helps;
    a message redrawn that way may no longer match."""
    rng = random.Random(seed)
    # the bare kernel message of each kernel example (an example may carry a prefix)
    trouble = [parse_line(ex.line).text for s in catalog.signatures if s.source == "kmsg"
               for ex in s.examples]
    count = 0
    with path.open("w") as f:
        for i in range(n):
            stamp = f"[{i * 0.000731:12.6f}] "
            if rng.random() * 100 < trouble_pct:
                message = rng.choice(trouble)
                if unique:
                    message = _DIGIT.sub(lambda _m: str(rng.randrange(10)), message)
                f.write(stamp + message + "\n")
                count += 1
                continue
            tpl = BENIGN[rng.randrange(len(BENIGN))]
            # the SYN template is real trouble: keep it rare like the rest
            if tpl.startswith("TCP:"):
                tpl = BENIGN[0]
            f.write(stamp + tpl.format(a=rng.randrange(10), b=rng.randrange(100000),
                                       c=rng.randrange(1000000),
                                       l="abcdef"[rng.randrange(6)]) + "\n")
    return count


_DIGIT = re.compile(r"\d")


def floor(path: Path) -> int:
    stats = ScanStats()
    with path.open("rb") as f:
        for _block, _lines in LineBlocks(f, stats):
            pass
    return stats.lines


def counted(path: Path) -> int:
    stats = ScanStats()
    with path.open("rb") as f:
        for _block, _lines in LineBlocks(f, stats).lazy():
            pass
    return stats.lines


def naive(path: Path, catalog: Catalog) -> int:
    """Every signature's regex searched anywhere in every line with Python `re`: the
    approach without a prefilter (the baseline the budget's ratio is against)."""
    patterns = [re.compile(s.regex, re.ASCII) for s in catalog.signatures]
    matched = 0
    stats = ScanStats()
    with path.open("rb") as f:
        for _block, lines in LineBlocks(f, stats):
            for raw in lines:
                text = raw.decode("utf-8", "replace")[:MAX_MATCH_CHARS]
                hit = False
                for p in patterns:
                    if p.search(text) is not None:
                        hit = True
                matched += hit
    return matched


def matcher_scan(path: Path, matcher: Matcher) -> int:
    stats = ScanStats()
    with path.open("rb") as f:
        for _hit in scan_stream(f, matcher, stats):
            pass
    return stats.matched_lines


def per_line(path: Path, matcher: Matcher) -> int:
    matched = 0
    stats = ScanStats()
    with path.open("rb") as f:
        for _block, lines in LineBlocks(f, stats):
            for raw in lines:
                if matcher.match(parse_line(raw.decode("utf-8", "replace"))):
                    matched += 1
    return matched


def measure(fns: dict[str, Callable[[], int]], runs: int) -> dict[str, tuple[list[float], int]]:
    """Seconds of each run of each function, the functions taking turns run by run (so a
    slow spell of a shared machine hits all of them alike), and each one's result (the
    same every run)."""
    out: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            result = fn()
            out[name][0].append(time.perf_counter() - t0)
            out[name] = (out[name][0], result)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--trouble-pct", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true", help="(slow) leave it out")
    args = parser.parse_args()

    # both hyperscan databases are built (or loaded from the cache) before the clock runs
    catalog, errors = load_catalog(None, databases=(BLOCK, LINE))
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kern.log"
        trouble = generate(path, args.lines, args.trouble_pct, catalog)
        size = path.stat().st_size
        print(f"corpus: {args.lines} lines, {size / 1e6:.1f} MB, {trouble} trouble lines "
              f"({100 * trouble / args.lines:.2f}%); {len(catalog)} signatures; "
              f"median of {args.runs} runs")
        hs = Matcher(catalog, "hyperscan")
        portable = Matcher(catalog, "portable")
        timed = measure({
            "floor": lambda: floor(path),
            "counted": lambda: counted(path),
            "hyperscan": lambda: matcher_scan(path, hs),
            "portable": lambda: matcher_scan(path, portable),
            "per-line": lambda: per_line(path, hs),
        }, args.runs)
        if not args.skip_naive:
            timed["naive"] = measure({"naive": lambda: naive(path, catalog)}, args.runs)["naive"]

    n = args.lines
    for name, (times, result) in timed.items():
        what = "lines" if name in ("floor", "counted") else "matched lines"
        secs = statistics.median(times)
        print(f"  {name:10s} {n / secs:>14,.0f} lines/s   {secs:7.3f} s   {result} {what}")
    if timed["hyperscan"][1] != timed["portable"][1]:
        print("MISMATCH: the engines found different lines", file=sys.stderr)
        return 1
    floor_times = timed["floor"][0]
    for engine in ("hyperscan", "portable"):
        times = timed[engine][0]
        # the floor and the engine ran side by side: the median of their paired ratios
        paired = statistics.median(f / e for f, e in zip(floor_times, times, strict=True))
        # portable is the fallback for platforms without a hyperscan wheel, held to the
        # same findings and a lower budget
        budget = "budget >= 25%" if engine == "hyperscan" else "fallback; budget >= 15%"
        parts = [f"{engine}/floor = {paired:.0%} ({budget}; median of {len(times)} "
                 "side-by-side pairs)"]
        if "naive" in timed:
            ratio = statistics.median(timed["naive"][0]) / statistics.median(times)
            parts.append(f"{engine}/naive = {ratio:.1f}x (budget >= 20x)")
        print("  " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
