"""`nodewarden scan [FILE|-] [--json]`: run the signature catalog over a file or stdin."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import BinaryIO

from agent.cli import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from agent.detect.catalog import DEFAULT_SIGNATURES_DIR, load_catalog
from agent.detect.hsdb import BLOCK
from agent.detect.matcher import Matcher, choose_engine
from agent.detect.scanner import MAX_LINE_BYTES, ScanHit, ScanStats, scan_stream
from agent.report.text import printable

HELP = (
    "Scan a kernel or mail log (FILE, or - for stdin) for known failure signatures: one "
    "finding per matching line. Accepts dmesg, dmesg -T, journalctl -k / syslog, raw "
    "/dev/kmsg records and plain messages, mixed. Recovery lines (e.g. 'nfs: server X OK') "
    "are printed too, marked recovery. A summary goes to stderr. Exit 0 whether or not "
    "anything matched; 2 for a missing file or a bad signature catalog; 3 for a read error."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default="-", metavar="FILE|-",
                        help="the log to scan; - (the default) reads stdin")
    parser.add_argument("--json", action="store_true",
                        help="print JSON lines (line_no, signature, problem, subject, "
                             "severity, facility, recovery, source, text, groups, truncated)")
    parser.add_argument("--signatures-dir", type=Path, default=DEFAULT_SIGNATURES_DIR,
                        help=f"user signatures directory (default {DEFAULT_SIGNATURES_DIR})")
    parser.add_argument("--engine", choices=("hyperscan", "portable"), default=None,
                        help="matcher engine (default: hyperscan if present; "
                             "or NODEWARDEN_MATCHER)")


#: control characters (binary input) are shown escaped in the text form, never raw


def render(hit: ScanHit, as_json: bool) -> str:
    m = hit.match
    if as_json:
        return json.dumps({
            "line_no": hit.line_no, "signature": m.signature, "problem": m.problem,
            "subject": m.subject, "severity": m.severity, "facility": m.line.facility,
            "recovery": m.recovery, "source": m.line.source, "text": m.line.text,
            "groups": dict(m.groups), "truncated": m.line.truncated,
        }, ensure_ascii=False)
    tag = f"[{m.signature}]" + (" RECOVERY" if m.recovery else "")
    text = printable(m.line.text)
    return f"{hit.line_no} {m.problem} {printable(m.subject)} {tag} {text}"


def _scan(stream: BinaryIO, matcher: Matcher, as_json: bool) -> ScanStats:
    stats = ScanStats()
    out = sys.stdout
    for hit in scan_stream(stream, matcher, stats):
        out.write(render(hit, as_json) + "\n")
    out.flush()
    return stats


def main(args: argparse.Namespace) -> int:
    try:
        engine = choose_engine(args.engine)
    except ValueError as exc:
        print(f"nodewarden scan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # scan uses the block database only (none with the portable engine): nothing else
    # is compiled, and that one build checks the patterns
    catalog, errors = load_catalog(args.signatures_dir,
                                   databases=(BLOCK,) if engine == "hyperscan" else ())
    if errors:
        for e in errors:
            print(f"nodewarden scan: {e}", file=sys.stderr)
        print(f"nodewarden scan: refusing to scan with {len(errors)} catalog error(s)",
              file=sys.stderr)
        return EXIT_USAGE
    matcher = Matcher(catalog, engine)
    try:
        if args.file == "-":
            stats = _scan(sys.stdin.buffer, matcher, args.json)
        else:
            with Path(args.file).open("rb") as stream:
                stats = _scan(stream, matcher, args.json)
    except FileNotFoundError:
        print(f"nodewarden scan: {args.file}: no such file", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"nodewarden scan: {args.file}: read error: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_RUNTIME
    print(stats.summary(), file=sys.stderr)
    if stats.truncated:
        print(f"scan: lines longer than {MAX_LINE_BYTES} bytes were cut there "
              "(JSON: truncated=true)", file=sys.stderr)
    return EXIT_OK
