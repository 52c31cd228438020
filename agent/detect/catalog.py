"""The signature catalog: data files that name known failures (docs/signatures.md).

One import for the catalog's callers; each job lives in its own module:

* agent/detect/signature.py: the values (Signature, Catalog, Example) and what a regex
  sees of a line (`match_window`, `message_of`);
* agent/detect/loader.py: reading the data files, refusing bad signatures with file, id
  and reason (`load_catalog`, `parse_signature_file`);
* agent/detect/regexcheck.py: the regex constructs every engine honours;
* agent/detect/examples.py: each signature's examples and counter-examples
  (`check_examples`);
* agent/detect/hsdb.py and agent/detect/dbcache.py: the hyperscan databases a command
  uses, built once and cached on disk.

`python -m agent.detect.catalog --markdown` prints the table in docs/signatures.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.detect.examples import check_examples
from agent.detect.hsdb import compile_patterns
from agent.detect.loader import (
    DEFAULT_SIGNATURES_DIR,
    MIN_LITERAL,
    SEVERITIES,
    load_catalog,
    parse_signature_file,
)
from agent.detect.regexcheck import regex_problems
from agent.detect.signature import (
    CUT_MARK,
    MAX_MATCH_CHARS,
    TAIL_CHARS,
    Catalog,
    Example,
    Signature,
    match_window,
    message_of,
)

__all__ = [
    "CUT_MARK", "DEFAULT_SIGNATURES_DIR", "KERNEL_PROBLEMS", "MAX_MATCH_CHARS", "MIN_LITERAL",
    "SEVERITIES", "TAIL_CHARS", "Catalog", "Example", "Signature", "check_examples",
    "compile_patterns", "load_catalog", "main", "markdown_table", "match_window",
    "message_of", "parse_signature_file", "regex_problems",
]

#: the kernel problems the catalog must cover, exactly (issue 3)
KERNEL_PROBLEMS = (
    "hung-task", "soft-lockup", "hard-lockup", "rcu-stall", "kernel-oops", "kernel-warning",
    "kernel-panic", "oom-kill", "alloc-failure", "block-io-error", "scsi-error", "ata-error",
    "nvme-error", "raid-degraded", "multipath-path-failed", "iscsi-error", "fs-error",
    "fs-readonly", "fs-shutdown", "nfs-not-responding", "nfsd-overload", "cifs-not-responding",
    "ceph-error", "mce", "memory-ecc", "thermal-throttle", "clocksource-unstable",
    "nic-tx-timeout", "nic-link-down", "conntrack-full", "syn-flood",
)


def markdown_table(catalog: Catalog) -> str:
    """The signature table of docs/signatures.md, generated from the data."""
    rows = ["| id | problem | source | severity | recovery | reference |",
            "|---|---|---|---|---|---|"]
    for s in sorted(catalog.signatures, key=lambda s: (s.source, s.problem, s.id)):
        rows.append(f"| `{s.id}` | {s.problem} | {s.source} | {s.severity} | "
                    f"{'clears' if s.recovery else ''} | {s.reference.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.detect.catalog")
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    parser.add_argument("--signatures-dir", type=Path, default=None,
                        help="also load this user directory")
    args = parser.parse_args(argv)
    catalog, errors = load_catalog(args.signatures_dir)
    for e in errors:
        print(e, file=sys.stderr)
    if args.markdown:
        sys.stdout.write(markdown_table(catalog))
    else:
        print(f"{len(catalog)} signatures, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
