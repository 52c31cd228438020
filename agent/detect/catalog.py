"""The signature catalog: data files that name known failures (docs/signatures.md).

Signatures ship as TOML files in `agent/signatures/` and operators add their own in
`/etc/nodewarden/signatures.d/*.toml`. Every signature carries examples (lines that must
match, with the subject they must give) and counter-examples (lines that must not): the
loader checks them, so a signature that does not do what its examples say is refused
with file, id and reason, like any other configuration error. A malformed user file is
reported, never a crash.

A signature matches a line's *fixed fields* only, so that text others write (a process
name, a file name in a kernel record, a HELO name or a user name in a mail log) can never
aim it (docs/signatures.md, "Trust"):

* a kernel signature's regex is matched at the start of the kernel message (the record
  text without dmesg/syslog prefixes, agent/sources/lineformat.py);
* a log signature names the `program` that writes the line (a regex that must match the
  line's whole program: `postfix/smtpd`, `dovecot/imap-login`, agent/sources/logrecord.py)
  and its regex is matched at the start of that program's message.

A regex may end with `$` to pin the end of the message (a field after a client-supplied
one is taken from the right). Regexes are run by RE2 (agent/detect/linear.py), in time
linear in the line whatever the pattern, and use the syntax RE2, Python `re` and
hyperscan share: no `^` (matching is anchored already), no lookarounds or
backreferences, no inline flags, and one literal of at least 3 characters that every
match must contain (derived automatically; it drives the portable Aho-Corasick
prefilter). `\\w`, `\\d` and `\\s` are ASCII classes on every engine.
A message longer than MAX_MATCH_CHARS is matched on its head and its tail (the real end
of the line, where the fixed fields after a client-supplied one are), never on a cut.

`python -m agent.detect.catalog --markdown` prints the table in docs/signatures.md.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

# re's own parser (the sre_parse module of old, deprecated under that name): no type stubs
from re import _constants as sre_c  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

from agent.detect.linear import LinearRegex, encode
from agent.detect.prefilter import literals_of, prefilter_pattern
from agent.model import Severity
from agent.schema import ConfigError, parse_toml
from agent.sources.lineformat import parse_line
from agent.sources.logrecord import parse_record

SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error", "critical")
SOURCE_RE = re.compile(r"kmsg|log:[A-Za-z0-9_.-]+")
ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
PROBLEM_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
#: a message longer than this is matched on its head and tail (match_window)
MAX_MATCH_CHARS = 4096
#: how much of the end of a long message is kept: the fixed fields that follow a
#: client-supplied one (dovecot's `, method=M, rip=A, lip=B, TLS, session=<S>`)
TAIL_CHARS = 1024
#: what stands for the part of a long message that is not matched
CUT_MARK = " \u2026[cut]\u2026 "
MIN_LITERAL = 3
#: where operators add their own signature files (agent.signatures_dir)
DEFAULT_SIGNATURES_DIR = Path("/etc/nodewarden/signatures.d")

#: the kernel problems the catalog must cover, exactly (issue 3)
KERNEL_PROBLEMS = (
    "hung-task", "soft-lockup", "hard-lockup", "rcu-stall", "kernel-oops", "kernel-warning",
    "kernel-panic", "oom-kill", "alloc-failure", "block-io-error", "scsi-error", "ata-error",
    "nvme-error", "raid-degraded", "multipath-path-failed", "iscsi-error", "fs-error",
    "fs-readonly", "fs-shutdown", "nfs-not-responding", "nfsd-overload", "cifs-not-responding",
    "ceph-error", "mce", "memory-ecc", "thermal-throttle", "clocksource-unstable",
    "nic-tx-timeout", "nic-link-down", "conntrack-full", "syn-flood",
)

_FIELDS = frozenset({
    "id", "problem", "regex", "source", "severity", "description", "reference", "subject",
    "recovery", "clears", "examples", "counter_examples", "program",
})
_FORBIDDEN_AT = {
    sre_c.AT_BEGINNING: "no '^' or \\A: a regex is matched at the start of the message "
                        "already",
    sre_c.AT_BEGINNING_STRING: "no '^' or \\A: a regex is matched at the start of the message "
                               "already",
    sre_c.AT_END_STRING: "no \\Z: end the regex with '$' to pin the end of the message",
    sre_c.AT_BEGINNING_LINE: "no multi-line anchors",
    sre_c.AT_END_LINE: "no multi-line anchors",
}
_FORBIDDEN_OPS = {
    sre_c.ASSERT: "lookarounds are not supported",
    sre_c.ASSERT_NOT: "lookarounds are not supported",
    sre_c.GROUPREF: "backreferences are not supported",
    sre_c.GROUPREF_EXISTS: "conditional groups are not supported",
}


@dataclass(frozen=True)
class Example:
    """A line a signature must match, and the subject it must give."""

    line: str
    subject: str


def match_window(text: str) -> str:
    """What a regex sees of a message: all of it, or its head and tail when it is long.

    The tail is the real end of the line, so a field taken from the right (the last
    `rip=` after a user name) is the line's own even when a client made the line huge;
    the cut is never at a place a client chose."""
    if len(text) <= MAX_MATCH_CHARS:
        return text
    return text[: MAX_MATCH_CHARS - TAIL_CHARS] + CUT_MARK + text[-TAIL_CHARS:]


def message_of(source: str, line: str) -> tuple[str | None, str]:
    """(program, message) of a raw example or scanned line for a signature of `source`:
    kernel lines lose their dmesg/syslog prefix; log lines are split by parse_record."""
    if source == "kmsg":
        return None, parse_line(line).text
    record = parse_record(line)
    return record.program, record.message


@dataclass(frozen=True)
class Signature:
    """One known failure (or recovery) line: data, checked by its own examples.

    `subject` names a named group of the regex; any other value is a literal subject
    (e.g. "host" for a kernel panic). A recovery signature (`recovery = true`) clears the
    finding of problem `clears` for the same subject and is never a finding itself; its
    `problem` is that cleared problem. `program` (log signatures only) must match the
    whole program of the line; `regex` is matched at the start of its message.
    """

    id: str
    problem: str
    regex: str
    source: str
    severity: Severity
    description: str
    reference: str
    subject: str
    examples: tuple[Example, ...]
    counter_examples: tuple[str, ...]
    recovery: bool = False
    clears: str | None = None
    file: str = ""
    literals: tuple[str, ...] = ()
    program: str | None = None
    compiled: LinearRegex | None = field(default=None, compare=False, repr=False, hash=False)
    compiled_program: LinearRegex | None = field(default=None, compare=False, repr=False,
                                                 hash=False)

    @property
    def subject_is_group(self) -> bool:
        return self.compiled is not None and self.subject in self.compiled.group_names

    def takes_program(self, program: bytes | None) -> bool:
        """Whether a line of this program may match (kernel signatures: any line)."""
        if self.compiled_program is None:
            return True
        return program is not None and self.compiled_program.fullmatch(program)

    def match_message(self, data: bytes) -> Mapping[str, str] | None:
        """Named groups when the (encoded, windowed) message matches, else None."""
        assert self.compiled is not None  # a loaded signature is always compiled
        return self.compiled.match(data)

    def subject_of(self, groups: Mapping[str, str]) -> str:
        if self.subject_is_group:
            return groups.get(self.subject) or "unknown"
        return self.subject

    def match_line(self, line: str) -> Mapping[str, str] | None:
        """The groups if a raw line (an example, a scanned line) matches, else None."""
        program, message = message_of(self.source, line)
        if not self.takes_program(None if program is None else encode(program)):
            return None
        return self.match_message(encode(match_window(message)))

    def extract(self, line: str) -> str | None:
        """The subject if a raw line matches, else None (used by example checks)."""
        groups = self.match_line(line)
        return None if groups is None else self.subject_of(groups)


@dataclass(frozen=True)
class Catalog:
    """Every valid signature, in load order (built-in first, then user files).

    `line_database` is the hyperscan database of the prefilter patterns, compiled once by
    `load_catalog` to check them (the matcher reuses it); None when not compiled."""

    signatures: tuple[Signature, ...] = ()
    line_database: Any = field(default=None, compare=False, repr=False)

    def by_id(self, sig_id: str) -> Signature:
        for sig in self.signatures:
            if sig.id == sig_id:
                return sig
        raise KeyError(sig_id)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted({s.source for s in self.signatures}))

    @property
    def problems(self) -> frozenset[str]:
        return frozenset(s.problem for s in self.signatures if not s.recovery)

    def __len__(self) -> int:
        return len(self.signatures)


# --------------------------------------------------------------------------- regex analysis
_INLINE_FLAGS = "inline flags (?i) (?m) (?s) (?x) (also scoped: (?i:...)) are not supported"


def regex_problems(parsed: Any) -> list[str]:
    """Constructs the engines cannot honour or that break anchoring, found by walking the
    parsed regex (`$` is allowed: it pins the end of the message on every engine)."""
    found: list[str] = []

    def walk(items: Sequence[tuple[Any, Any]]) -> None:
        for op, av in items:
            if op in _FORBIDDEN_OPS:
                found.append(_FORBIDDEN_OPS[op])
            elif op is sre_c.AT and av in _FORBIDDEN_AT:
                found.append(_FORBIDDEN_AT[av])
            elif op is sre_c.SUBPATTERN:
                if av[1] or av[2]:  # (?i:...): the required literal would be case-bound
                    found.append(_INLINE_FLAGS)
                walk(av[-1])
            elif op is sre_c.BRANCH:
                for branch in av[1]:
                    walk(branch)
            elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
                if op is sre_c.POSSESSIVE_REPEAT:
                    found.append("possessive quantifiers are not supported")
                walk(av[2])
            elif op is sre_c.ATOMIC_GROUP:
                found.append("atomic groups are not supported")

    walk(parsed.data)
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE):
        found.append(_INLINE_FLAGS)
    return sorted(set(found))


#: the line database's flags (PREFILTER: hyperscan may approximate, the signature confirms)
HYPERSCAN_FLAGS = ("HS_FLAG_SINGLEMATCH", "HS_FLAG_PREFILTER")


def hyperscan_database(patterns: Sequence[str], flags: Sequence[str] = HYPERSCAN_FLAGS) -> Any:
    """One hyperscan database of `patterns` (raises hyperscan.error, ImportError)."""
    import hyperscan

    value = 0
    for name in flags:
        value |= getattr(hyperscan, name)
    db = hyperscan.Database()
    db.compile(expressions=[p.encode() for p in patterns], ids=list(range(len(patterns))),
               elements=len(patterns), flags=[value] * len(patterns))
    return db


def _hyperscan_check(sigs: list[Signature]) -> tuple[list[Signature], Any, list[ConfigError]]:
    """Compile every prefilter pattern into one database (the matcher reuses it); when
    that fails, find the signatures hyperscan refuses one by one and drop them."""
    try:
        import hyperscan
    except ImportError:
        return sigs, None, []
    if not sigs:
        return sigs, None, []
    try:
        return sigs, hyperscan_database([prefilter_pattern(s.regex) for s in sigs]), []
    except hyperscan.error:
        pass
    kept: list[Signature] = []
    errors: list[ConfigError] = []
    for sig in sigs:
        try:
            hyperscan_database([prefilter_pattern(sig.regex)])
        except hyperscan.error as exc:
            errors.append(ConfigError(sig.file, _key(sig.id, "regex"),
                                      f"hyperscan cannot compile it: {exc}"))
        else:
            kept.append(sig)
    return kept, None, errors


# --------------------------------------------------------------------------- loading
def _compile(pattern: str, name: str, err: Callable[[str, str], None]) -> LinearRegex | None:
    try:
        return LinearRegex(pattern)
    except ValueError as exc:
        err(name, str(exc))
        return None


def _key(sig_id: str, name: str) -> str:
    return f"signature[{sig_id}].{name}" if name else f"signature[{sig_id}]"


def _parse_one(raw: Any, file: str, index: int, errors: list[ConfigError]) -> Signature | None:
    """One `[[signature]]` table, or None after recording why it is refused."""
    mine: list[ConfigError] = []
    if not isinstance(raw, dict):
        errors.append(ConfigError(file, f"signature[#{index}]", "must be a table"))
        return None
    sig_id = raw.get("id")
    if not isinstance(sig_id, str) or not ID_RE.fullmatch(sig_id):
        mine.append(ConfigError(file, f"signature[#{index}].id",
                                "is required: lowercase letters, digits, '.', '-', '_'"
                                if sig_id is None else f"invalid id {sig_id!r}"))
        sig_id = f"#{index}"

    def err(name: str, reason: str) -> None:
        mine.append(ConfigError(file, _key(sig_id, name), reason))

    def text(name: str, required: bool = True) -> str:
        value = raw.get(name)
        if value is None:
            if required:
                err(name, "is required")
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            err(name, f"must be a non-empty string, not {value!r}"[:200])
            return ""
        return value

    for name in sorted(set(raw) - _FIELDS):
        err(name, "unknown field (misspelt? see docs/signatures.md)")

    recovery = raw.get("recovery", False)
    if not isinstance(recovery, bool):
        err("recovery", "must be true or false")
        recovery = False
    clears = text("clears", required=recovery) or None
    problem = text("problem", required=not recovery) or (clears or "")
    if clears and not recovery:
        err("clears", "only a recovery signature (recovery = true) clears a problem")
    if recovery and clears and raw.get("problem") not in (None, clears):
        err("problem", f"a recovery signature's problem is the one it clears ({clears!r})")
    if problem and not PROBLEM_RE.fullmatch(problem):
        err("problem", f"invalid problem id {problem!r}")

    source = text("source")
    if source and not SOURCE_RE.fullmatch(source):
        err("source", f"unknown source {source!r}: use kmsg or log:NAME")
    severity = text("severity")
    if severity and severity not in SEVERITIES:
        err("severity", f"unknown severity {severity!r}: one of {', '.join(SEVERITIES)}")
        severity = ""
    description = text("description")
    reference = text("reference")
    subject = text("subject")

    program_text = text("program", required=False) or None
    compiled_program: LinearRegex | None = None
    if source == "kmsg" and program_text is not None:
        err("program", "a kernel signature has no program (the kernel wrote the line)")
    elif source.startswith("log:") and program_text is None:
        err("program", "is required for a log signature: the program that writes the line "
            "(a regex matching all of it, e.g. 'postfix[\\w.-]*/smtpd'); text anywhere "
            "in a line could be a client's")
    elif program_text is not None:
        compiled_program = _compile(program_text, "program", err)

    regex = text("regex")
    compiled: LinearRegex | None = None
    literals: tuple[str, ...] = ()
    if regex:
        try:
            parsed = sre_parse.parse(regex)
        except (re.error, RecursionError, OverflowError) as exc:
            err("regex", f"bad regex: {exc}")
        else:
            for problem_text in regex_problems(parsed):
                err("regex", problem_text)
            literals = literals_of(parsed.data)
            if not literals or min(map(len, literals)) < MIN_LITERAL:
                err("regex", f"needs a literal of at least {MIN_LITERAL} characters that every "
                    "match contains (the portable prefilter uses it)")
            compiled = _compile(regex, "regex", err)

    examples: list[Example] = []
    raw_examples = raw.get("examples")
    if not isinstance(raw_examples, list) or len(raw_examples) < 2:
        err("examples", "needs at least 2 examples ({line = ..., subject = ...})")
    else:
        for i, ex in enumerate(raw_examples):
            if (not isinstance(ex, dict) or set(ex) != {"line", "subject"}
                    or not all(isinstance(v, str) for v in ex.values())):
                err(f"examples[{i}]", "must be {line = \"...\", subject = \"...\"}")
            else:
                examples.append(Example(ex["line"], ex["subject"]))
    counter = raw.get("counter_examples")
    counters: tuple[str, ...] = ()
    if (not isinstance(counter, list) or not counter
            or not all(isinstance(c, str) for c in counter)):
        err("counter_examples", "needs at least 1 counter-example line (a list of strings)")
    else:
        counters = tuple(counter)

    if mine or compiled is None:
        errors.extend(mine)
        return None
    sig = Signature(
        id=sig_id, problem=problem, regex=regex, source=source,
        severity=severity,  # type: ignore[arg-type]  # checked against SEVERITIES above
        description=description, reference=reference, subject=subject,
        examples=tuple(examples), counter_examples=counters, recovery=recovery,
        clears=clears, file=file, literals=literals, program=program_text,
        compiled=compiled, compiled_program=compiled_program,
    )
    example_errors = check_examples(Catalog((sig,)))
    if example_errors:
        errors.extend(example_errors)
        return None
    return sig


def check_examples(catalog: Catalog) -> list[ConfigError]:
    """Every example must match and give its subject; no counter-example may match."""
    errors: list[ConfigError] = []
    for sig in catalog.signatures:
        for i, ex in enumerate(sig.examples):
            got = sig.extract(ex.line)
            if got is None:
                program, message = message_of(sig.source, ex.line)
                seen = "" if program is None else f" (program {program!r}, message " \
                                                  f"{message[:60]!r})"
                errors.append(ConfigError(sig.file, _key(sig.id, f"examples[{i}]"),
                                          f"does not match: {ex.line!r}"[:240] + seen))
            elif got != ex.subject:
                errors.append(ConfigError(
                    sig.file, _key(sig.id, f"examples[{i}]"),
                    f"gives subject {got!r}, expected {ex.subject!r}"[:300]))
        for i, line in enumerate(sig.counter_examples):
            if sig.match_line(line) is not None:
                errors.append(ConfigError(sig.file, _key(sig.id, f"counter_examples[{i}]"),
                                          f"matches, but must not: {line!r}"[:300]))
    return errors


def parse_signature_file(
    data: bytes, file: str, seen: dict[str, str] | None = None
) -> tuple[list[Signature], list[ConfigError]]:
    """Parse one file's bytes; `seen` maps ids already loaded to their file (duplicates)."""
    seen = {} if seen is None else seen
    errors: list[ConfigError] = []
    raw, problems = parse_toml(data, file)
    if raw is None:
        return [], problems
    for name in sorted(set(raw) - {"signature"}):
        errors.append(ConfigError(file, name, "unknown key: a file holds [[signature]] tables"))
    tables = raw.get("signature", [])
    if not isinstance(tables, list):
        errors.append(ConfigError(file, "signature", "must be an array of tables [[signature]]"))
        tables = []
    out: list[Signature] = []
    for i, table in enumerate(tables):
        sig = _parse_one(table, file, i, errors)
        if sig is None:
            continue
        if sig.id in seen:
            errors.append(ConfigError(file, _key(sig.id, "id"),
                                      f"duplicate id (already defined in {seen[sig.id]})"))
            continue
        seen[sig.id] = file
        out.append(sig)
    return out, errors


def _builtin_files() -> Iterator[tuple[str, bytes]]:
    folder = resources.files("agent").joinpath("signatures")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            yield f"agent/signatures/{entry.name}", entry.read_bytes()


#: a signature file is a few KiB; anything this big is not one
MAX_SIGNATURE_FILE = 4 << 20


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_SIGNATURE_FILE; OSError otherwise (a
    FIFO would block `check` for ever, /dev/zero would fill memory)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > MAX_SIGNATURE_FILE:
            raise OSError(errno.EFBIG, f"larger than {MAX_SIGNATURE_FILE >> 20} MiB")
        data = os.read(fd, MAX_SIGNATURE_FILE + 1)
        if len(data) > MAX_SIGNATURE_FILE:
            raise OSError(errno.EFBIG, f"larger than {MAX_SIGNATURE_FILE >> 20} MiB")
        return data
    finally:
        os.close(fd)


def _user_files(user_dir: Path) -> Iterator[tuple[str, bytes | OSError]]:
    try:
        paths = sorted(user_dir.glob("*.toml"))
    except OSError as exc:
        yield str(user_dir), exc
        return
    for path in paths:
        try:
            yield str(path), _read_regular(path)
        except OSError as exc:
            yield str(path), exc


def load_catalog(
    user_dir: Path | None = DEFAULT_SIGNATURES_DIR,
) -> tuple[Catalog, list[ConfigError]]:
    """The built-in signatures plus `user_dir/*.toml` (None = built-in only).

    Returns every valid signature and every error; a caller that must not run half a
    catalog (scan, run, check) refuses when the error list is not empty. A missing user
    directory is not an error.
    """
    seen: dict[str, str] = {}
    sigs: list[Signature] = []
    errors: list[ConfigError] = []
    files: list[tuple[str, bytes | OSError]] = list(_builtin_files())
    if user_dir is not None and user_dir.is_dir():
        files.extend(_user_files(user_dir))
    for name, data in files:
        if isinstance(data, OSError):
            errors.append(ConfigError(name, "-", f"cannot read: {data.strerror or data}"))
            continue
        got, errs = parse_signature_file(data, name, seen)
        sigs.extend(got)
        errors.extend(errs)
    sigs, database, refused = _hyperscan_check(sigs)
    return Catalog(tuple(sigs), database), errors + refused


# --------------------------------------------------------------------------- docs
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
