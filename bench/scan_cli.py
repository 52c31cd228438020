"""Benchmark `nodewarden scan` as an operator runs it: whole processes, start-up included.

Prints, each as the median of ratios of side-by-side pairs (A then B, again and again:
this machine's speed drifts by 2x within a minute, so only a ratio measured in the same
moment means something):

  start-up   `python -m agent scan EMPTY` / `python -c pass` (a bare interpreter), with
             a warm database cache and with a cold one (an empty cache directory per run);
             budget (issue 8): warm <= 15x
  end to end `python -m agent scan FILE [--json] > /dev/null` / a Python per-line read
             of the same file, `for line in open(FILE, encoding="utf-8",
             errors="replace"): pass` (every line read and decoded, as a Python tool
             reading a log does), on a generated dmesg-style log with --trouble-pct
             (default 13) % matched lines; budget (issue 8): <= 3x, JSON and text. The
             ratio to a binary read (`open(FILE, "rb")`, no decoding) is printed too.
             The trouble lines are the catalog's examples, so their messages repeat
             (as a failing disk or server repeats itself), which scan's memo of
             repeated messages serves (agent/detect/scanrender.py); the row "json,
             unique" runs a corpus whose trouble messages have every digit drawn anew,
             so they rarely repeat: the cost of matching each line in full.

The code's bytecode is compiled first (`python -m compileall`, into the usual
__pycache__ folders), as an installed package has it: with PYTHONDONTWRITEBYTECODE set
and no bytecode, every scan process would compile its ~70 modules from source (~0.15 s),
which no installed agent does.

Figures, never pass/fail: the exit code is 0 either way (1 only when scan itself fails).

Usage: python bench/scan_cli.py [--lines N] [--trouble-pct P] [--pairs K] [--engine E]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/scan_cli.py` from anywhere: bench.scan

from agent.detect.catalog import load_catalog  # noqa: E402
from bench.scan import BENIGN, generate  # noqa: E402

READ_TEXT = ("import sys\nfor line in open(sys.argv[1], encoding='utf-8', errors='replace'):"
             " pass")
READ_BINARY = "import sys\nfor line in open(sys.argv[1], 'rb'): pass"


def run(cmd: Sequence[str], env: Mapping[str, str]) -> float:
    """Seconds of one whole process, its output thrown away; RuntimeError on failure."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          cwd=REPO, check=False)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: "
                           f"{done.stderr.decode(errors='replace')[-500:]}")
    return took


def paired(a: Sequence[str], b: Sequence[str], pairs: int, env: Mapping[str, str],
           env_a: Mapping[str, str] | None = None) -> tuple[float, float, float]:
    """(median ratio a/b of side-by-side pairs, median a seconds, median b seconds)."""
    ratios, a_times, b_times = [], [], []
    for _ in range(pairs):
        ta = run(a, env_a or env)
        tb = run(b, env)
        ratios.append(ta / tb)
        a_times.append(ta)
        b_times.append(tb)
    return statistics.median(ratios), statistics.median(a_times), statistics.median(b_times)


def startup(py: str, env: dict[str, str], tmp: Path, pairs: int, engine: str) -> None:
    empty = tmp / "empty.log"
    empty.write_bytes(b"")
    sigs = tmp / "sigs"
    sigs.mkdir()
    scan = [py, "-m", "agent", "scan", str(empty), "--signatures-dir", str(sigs),
            "--engine", engine]
    bare = [py, "-c", "pass"]
    warm = dict(env, NODEWARDEN_CACHE=str(tmp / "cache-warm"))
    run(scan, warm)  # fills the cache
    ratio, a, b = paired(scan, bare, pairs, env, warm)
    print(f"  start-up, warm cache  {ratio:5.1f}x  (scan {a:.3f} s, python -c pass {b:.3f} s; "
          f"budget <= 15x; median of {pairs} pairs)")
    cold_ratios = []
    for i in range(pairs):
        cold = dict(env, NODEWARDEN_CACHE=str(tmp / f"cache-cold-{i}"))
        cold_ratios.append(run(scan, cold) / run(bare, env))
    print(f"  start-up, cold cache  {statistics.median(cold_ratios):5.1f}x  (an empty cache "
          f"directory each run: the database is compiled and stored)")


def end_to_end(py: str, env: dict[str, str], tmp: Path, args: argparse.Namespace) -> None:
    catalog, _errors = load_catalog(None, databases=())
    log = tmp / "kern.log"
    trouble = generate(log, args.lines, args.trouble_pct, catalog)
    print(f"corpus: {args.lines} lines, {log.stat().st_size / 1e6:.1f} MB, {trouble} trouble "
          f"lines ({100 * trouble / args.lines:.1f}%), {_distinct(log)} distinct messages "
          "among them")
    unique = tmp / "kern-unique.log"
    generate(unique, args.lines, args.trouble_pct, catalog, unique=True)
    warm = dict(env, NODEWARDEN_CACHE=str(tmp / "cache-warm"))
    sigs = tmp / "sigs"
    for form, path, json_flag in (("json", log, True), ("text", log, False),
                                  ("json, unique", unique, True)):
        scan = [py, "-m", "agent", "scan", str(path), "--signatures-dir", str(sigs),
                "--engine", args.engine, *(["--json"] if json_flag else [])]
        if path == unique:
            print(f"corpus, unique: {_distinct(unique)} distinct trouble messages")
        read_text = [py, "-c", READ_TEXT, str(path)]
        read_binary = [py, "-c", READ_BINARY, str(path)]
        ratio, a, b = paired(scan, read_text, args.pairs, env, warm)
        rb, _a, b2 = paired(scan, read_binary, args.pairs, env, warm)
        print(f"  end to end, {form:4s}  {ratio:5.1f}x a decoding per-line read  "
              f"(scan {a:.2f} s, read {b:.2f} s; budget <= 3x); {rb:.1f}x a binary "
              f"per-line read ({b2:.2f} s)")


def _distinct(log: Path) -> int:
    """How many distinct messages the trouble lines of a generated corpus hold (a
    trouble line is one whose message is not a BENIGN template's)."""
    heads = tuple(t.split("{", 1)[0] for t in BENIGN)
    with log.open() as f:
        return len({line[15:] for line in f if not line[15:].startswith(heads)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--trouble-pct", type=float, default=13.0)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--engine", choices=("hyperscan", "portable"), default="hyperscan")
    args = parser.parse_args()
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([py, "-m", "compileall", "-q", str(REPO / "agent")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    print(f"nodewarden scan, whole processes, engine {args.engine}; ratios are medians of "
          f"{args.pairs} side-by-side pairs")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            startup(py, env, Path(tmp), args.pairs, args.engine)
            end_to_end(py, env, Path(tmp), args)
        except RuntimeError as exc:
            print(f"scan failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
