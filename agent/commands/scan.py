"""`nodewarden scan [FILE|-] [--json]`: run the signature catalog over a file or stdin."""

from __future__ import annotations

import argparse
import gc
import sys
from json.encoder import encode_basestring as _enc
from pathlib import Path
from typing import BinaryIO

from agent.cli import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from agent.detect.hsdb import BLOCK
from agent.detect.loader import DEFAULT_SIGNATURES_DIR, load_catalog
from agent.detect.matcher import Matcher, choose_engine
from agent.detect.scanner import MAX_LINE_BYTES, ScanHit, ScanStats
from agent.detect.scanrender import scan_rendered
from agent.model import SignatureMatch
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


class Renderer:
    """One output line per hit, as JSON or text, at a few µs a line.

    The JSON form is exactly `json.dumps(record, ensure_ascii=False)` of the record below
    (tests/unit/test_scan_fast.py compares them): the fields that come from the catalog
    (signature, problem, severity, recovery) are encoded once per signature, and the
    others with json's own string encoder. The text form shows control characters in
    text others wrote escaped, never raw (agent/report/text.py)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        #: what an output line starts with, before its line number
        self.prefix = "{\"line_no\": " if as_json else ""
        self._heads: dict[tuple[str, str, str, bool], tuple[str, str, str]] = {}

    def _head(self, m: SignatureMatch) -> tuple[str, str, str]:
        key = (m.signature, m.problem, m.severity, m.recovery)
        head = self._heads.get(key)
        if head is None:
            if self.as_json:
                head = (f", \"signature\": {_enc(m.signature)}, \"problem\": {_enc(m.problem)}"
                        ", \"subject\": ",
                        f", \"severity\": {_enc(m.severity)}, \"facility\": ",
                        f", \"recovery\": {'true' if m.recovery else 'false'}, \"source\": ")
            else:
                tag = f"[{m.signature}]" + (" RECOVERY" if m.recovery else "")
                head = (f" {m.problem} ", f" {tag} ", "")
            self._heads[key] = head
        return head

    def tail(self, m: SignatureMatch) -> str:
        """The output line after its line number (agent/detect/scanrender.py)."""
        line = m.line
        subject_at, severity_at, source_at = self._head(m)
        if not self.as_json:
            return f"{subject_at}{_shown(m.subject)}{severity_at}{_shown(line.text)}"
        facility = "null" if line.facility is None else int(line.facility)
        groups = "{}"
        if m.groups:
            groups = "{" + ", ".join([f"{_enc(k)}: {_enc(v)}" for k, v in m.groups.items()]) + "}"
        return (f"{subject_at}{_enc(m.subject)}{severity_at}"
                f"{facility}{source_at}{_enc(line.source)}, \"text\": {_enc(line.text)}, "
                f"\"groups\": {groups}, \"truncated\": {'true' if line.truncated else 'false'}}}")

    def __call__(self, hit: ScanHit) -> str:
        return f"{self.prefix}{hit.line_no}{self.tail(hit.match)}"


def _shown(text: str) -> str:
    """`printable(text)`, skipped for the common text without any control character."""
    return text if text.isprintable() else printable(text)


def _scan(stream: BinaryIO, matcher: Matcher, as_json: bool) -> ScanStats:
    """Scan with the cyclic garbage collector off: a scan makes no reference cycles (its
    objects go with their last reference), and the collector's passes over the sets and
    spans of every candidate line cost ~6% of a scan (docs/architecture.md)."""
    stats = ScanStats()
    out = sys.stdout
    gc.disable()
    try:
        for chunk in scan_rendered(stream, matcher, stats, Renderer(as_json)):
            out.write(chunk)  # one write per block of lines read
    finally:
        gc.enable()
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
