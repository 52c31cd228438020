"""Load the signature catalog from its data files and refuse what is wrong in them.

Signatures ship as TOML files in `agent/signatures/` and operators add their own in
`/etc/nodewarden/signatures.d/*.toml`. Each `[[signature]]` table is checked field by
field, its regex against the rules every engine can honour (agent/detect/regexcheck.py),
and by its own examples (agent/detect/examples.py); a bad one is refused with file, id
and reason, like any other configuration error. A malformed user file is reported, never
a crash. Where hyperscan is installed, the prefilter patterns are checked by building the
hyperscan database the calling command will use (agent/detect/hsdb.py): one compile, or
none with a warm cache.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# re's own parser (the sre_parse module of old, deprecated under that name): no type stubs
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Literal

from agent.detect import catcache
from agent.detect.dbcache import DatabaseCache, default_cache
from agent.detect.examples import signature_example_errors
from agent.detect.hsdb import LINE, checked_databases
from agent.detect.linear import LinearRegex
from agent.detect.literals import literals_of
from agent.detect.regexcheck import regex_problems
from agent.detect.signature import Catalog, Example, Signature, config_key
from agent.model import Severity
from agent.schema import ConfigError, parse_toml

SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error", "critical")
SOURCE_RE = re.compile(r"kmsg|log:[A-Za-z0-9_.-]+")
ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
PROBLEM_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
MIN_LITERAL = 3
#: where operators add their own signature files (agent.signatures_dir)
DEFAULT_SIGNATURES_DIR = Path("/etc/nodewarden/signatures.d")
#: a signature file is a few KiB; anything this big is not one
MAX_SIGNATURE_FILE = 4 << 20

_FIELDS = frozenset({
    "id", "problem", "regex", "source", "severity", "description", "reference", "subject",
    "recovery", "clears", "examples", "counter_examples", "program",
})


def _compile(pattern: str, name: str, err: Callable[[str, str], None]) -> LinearRegex | None:
    try:
        return LinearRegex(pattern)
    except ValueError as exc:
        err(name, str(exc))
        return None


class _Table:
    """One `[[signature]]` table being read: its fields, and the errors found so far."""

    def __init__(self, raw: dict[str, Any], file: str, sig_id: str) -> None:
        self.raw = raw
        self.file = file
        self.sig_id = sig_id
        self.errors: list[ConfigError] = []

    def err(self, name: str, reason: str) -> None:
        self.errors.append(ConfigError(self.file, config_key(self.sig_id, name), reason))

    def text(self, name: str, required: bool = True) -> str:
        value = self.raw.get(name)
        if value is None:
            if required:
                self.err(name, "is required")
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            self.err(name, f"must be a non-empty string, not {value!r}"[:200])
            return ""
        return value

    def problem_fields(self) -> tuple[bool, str | None, str]:
        """(recovery, clears, problem)."""
        recovery = self.raw.get("recovery", False)
        if not isinstance(recovery, bool):
            self.err("recovery", "must be true or false")
            recovery = False
        clears = self.text("clears", required=recovery) or None
        problem = self.text("problem", required=not recovery) or (clears or "")
        if clears and not recovery:
            self.err("clears", "only a recovery signature (recovery = true) clears a problem")
        if recovery and clears and self.raw.get("problem") not in (None, clears):
            self.err("problem",
                     f"a recovery signature's problem is the one it clears ({clears!r})")
        if problem and not PROBLEM_RE.fullmatch(problem):
            self.err("problem", f"invalid problem id {problem!r}")
        return recovery, clears, problem

    def program(self, source: str) -> tuple[str | None, LinearRegex | None]:
        program = self.text("program", required=False) or None
        if source == "kmsg" and program is not None:
            self.err("program", "a kernel signature has no program (the kernel wrote the line)")
        elif source.startswith("log:") and program is None:
            self.err("program", "is required for a log signature: the program that writes the "
                     "line (a regex matching all of it, e.g. 'postfix[\\w.-]*/smtpd'); text "
                     "anywhere in a line could be a client's")
        elif program is not None:
            return program, _compile(program, "program", self.err)
        return program, None

    def regex(self) -> tuple[str, LinearRegex | None, tuple[str, ...]]:
        """(regex, compiled, required literals)."""
        regex = self.text("regex")
        if not regex:
            return regex, None, ()
        try:
            parsed = sre_parse.parse(regex)
        except (re.error, RecursionError, OverflowError) as exc:
            self.err("regex", f"bad regex: {exc}")
            return regex, None, ()
        for problem_text in regex_problems(parsed):
            self.err("regex", problem_text)
        literals = literals_of(parsed.data)
        if not literals or min(map(len, literals)) < MIN_LITERAL:
            self.err("regex", f"needs a literal of at least {MIN_LITERAL} characters that "
                     "every match contains (the portable prefilter uses it)")
        return regex, _compile(regex, "regex", self.err), literals

    def examples(self) -> tuple[tuple[Example, ...], tuple[str, ...]]:
        examples: list[Example] = []
        raw_examples = self.raw.get("examples")
        if not isinstance(raw_examples, list) or len(raw_examples) < 2:
            self.err("examples", "needs at least 2 examples ({line = ..., subject = ...})")
        else:
            for i, ex in enumerate(raw_examples):
                if (not isinstance(ex, dict) or set(ex) != {"line", "subject"}
                        or not all(isinstance(v, str) for v in ex.values())):
                    self.err(f"examples[{i}]", "must be {line = \"...\", subject = \"...\"}")
                else:
                    examples.append(Example(ex["line"], ex["subject"]))
        counter = self.raw.get("counter_examples")
        if (not isinstance(counter, list) or not counter
                or not all(isinstance(c, str) for c in counter)):
            self.err("counter_examples",
                     "needs at least 1 counter-example line (a list of strings)")
            return tuple(examples), ()
        return tuple(examples), tuple(counter)


def _table_id(raw: dict[str, Any], file: str, index: int,
              errors: list[ConfigError]) -> str:
    sig_id = raw.get("id")
    if isinstance(sig_id, str) and ID_RE.fullmatch(sig_id):
        return sig_id
    errors.append(ConfigError(file, f"signature[#{index}].id",
                              "is required: lowercase letters, digits, '.', '-', '_'"
                              if sig_id is None else f"invalid id {sig_id!r}"))
    return f"#{index}"


def _parse_one(raw: Any, file: str, index: int, errors: list[ConfigError]) -> Signature | None:
    """One `[[signature]]` table, or None after recording why it is refused."""
    if not isinstance(raw, dict):
        errors.append(ConfigError(file, f"signature[#{index}]", "must be a table"))
        return None
    id_errors: list[ConfigError] = []
    table = _Table(raw, file, _table_id(raw, file, index, id_errors))
    table.errors.extend(id_errors)
    for name in sorted(set(raw) - _FIELDS):
        table.err(name, "unknown field (misspelt? see docs/signatures.md)")
    recovery, clears, problem = table.problem_fields()
    source = table.text("source")
    if source and not SOURCE_RE.fullmatch(source):
        table.err("source", f"unknown source {source!r}: use kmsg or log:NAME")
    severity = table.text("severity")
    if severity and severity not in SEVERITIES:
        table.err("severity",
                  f"unknown severity {severity!r}: one of {', '.join(SEVERITIES)}")
    texts = {name: table.text(name) for name in ("description", "reference", "subject")}
    program, compiled_program = table.program(source)
    regex, compiled, literals = table.regex()
    examples, counters = table.examples()
    if table.errors or compiled is None:
        errors.extend(table.errors)
        return None
    sig = Signature(
        id=table.sig_id, problem=problem, regex=regex, source=source,
        severity=severity,  # type: ignore[arg-type]  # checked against SEVERITIES above
        examples=examples, counter_examples=counters, recovery=recovery, clears=clears,
        file=file, literals=literals, program=program, compiled=compiled,
        compiled_program=compiled_program, **texts,
    )
    example_errors = signature_example_errors(sig)
    if example_errors:
        errors.extend(example_errors)
        return None
    return sig


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
            errors.append(ConfigError(file, config_key(sig.id, "id"),
                                      f"duplicate id (already defined in {seen[sig.id]})"))
            continue
        seen[sig.id] = file
        out.append(sig)
    return out, errors


def _builtin_files() -> Iterator[tuple[str, bytes]]:
    # the package's own folder, not importlib.resources (it imports tempfile, zipfile and
    # their kin, ~2 MiB of RSS the daemon would carry): the agent runs from files
    folder = Path(__file__).resolve().parent.parent / "signatures"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            yield f"agent/signatures/{entry.name}", entry.read_bytes()


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
    *,
    databases: Sequence[str] = (LINE,),
    cache: DatabaseCache | Literal["env"] | None = "env",
) -> tuple[Catalog, list[ConfigError]]:
    """The built-in signatures plus `user_dir/*.toml` (None = built-in only).

    Returns every valid signature and every error; a caller that must not run half a
    catalog (scan, run, check) refuses when the error list is not empty. A missing user
    directory is not an error. `databases`: the hyperscan databases the caller will use
    (agent/detect/hsdb.py; the default is the daemon's per-line one), built once, and the
    first of them checks the patterns; () builds none and leaves hyperscan's check out.
    `cache`: where built databases are kept ("env": as NODEWARDEN_CACHE says; None: no
    cache); a catalog read without an error is kept there too (agent/detect/catcache.py).
    """
    files: list[tuple[str, bytes | OSError]] = list(_builtin_files())
    if user_dir is not None and user_dir.is_dir():
        files.extend(_user_files(user_dir))
    where = default_cache() if isinstance(cache, str) else cache
    sigs, errors = _read_cached(files, where)
    kept, built, refused = checked_databases(sigs, databases, where)
    return Catalog(tuple(kept), built), errors + refused


def _read(files: list[tuple[str, bytes | OSError]]) -> tuple[list[Signature], list[ConfigError]]:
    seen: dict[str, str] = {}
    sigs: list[Signature] = []
    errors: list[ConfigError] = []
    for name, data in files:
        if isinstance(data, OSError):
            errors.append(ConfigError(name, "-", f"cannot read: {data.strerror or data}"))
            continue
        got, errs = parse_signature_file(data, name, seen)
        sigs.extend(got)
        errors.extend(errs)
    return sigs, errors


def _read_cached(files: list[tuple[str, bytes | OSError]], where: DatabaseCache | None
                 ) -> tuple[list[Signature], list[ConfigError]]:
    """The files read in full, or taken from the catalog cache (agent/detect/catcache.py)
    when they were read without an error before, by the same code."""
    readable = [(name, data) for name, data in files if not isinstance(data, OSError)]
    if where is None or len(readable) != len(files) or (code := catcache.code_digest()) is None:
        return _read(files)
    key = catcache.catalog_key(readable, code)
    cached = catcache.load(where, key)
    if cached is not None:
        return cached, []
    sigs, errors = _read(files)
    if not errors:
        catcache.store(where, key, sigs)
    return sigs, errors
