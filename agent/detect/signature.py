"""The values of the signature catalog: a Signature, the Catalog of them, and what a
regex sees of a line (docs/signatures.md).

A signature matches a line's *fixed fields* only, so that text others write (a process
name, a file name in a kernel record, a HELO name or a user name in a mail log) can never
aim it (docs/signatures.md, "Trust"):

* a kernel signature's regex is matched at the start of the kernel message (the record
  text without dmesg/syslog prefixes, agent/sources/lineformat.py);
* a log signature names the `program` that writes the line (a regex that must match the
  line's whole program: `postfix/smtpd`, `dovecot/imap-login`, agent/sources/logrecord.py)
  and its regex is matched at the start of that program's message.

A message longer than MAX_MATCH_CHARS is matched on its head and its tail (the real end
of the line, where the fixed fields after a client-supplied one are), never on a cut.
Loading and checking the data files is agent/detect/loader.py's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.detect.linear import LinearRegex, encode
from agent.model import Severity
from agent.sources.lineformat import parse_line
from agent.sources.logrecord import parse_record

#: a message longer than this is matched on its head and tail (match_window)
MAX_MATCH_CHARS = 4096
#: how much of the end of a long message is kept: the fixed fields that follow a
#: client-supplied one (dovecot's `, method=M, rip=A, lip=B, TLS, session=<S>`)
TAIL_CHARS = 1024
#: what stands for the part of a long message that is not matched
CUT_MARK = " \u2026[cut]\u2026 "


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
    #: the hyperscan prefilter pattern when known (from the catalog cache), else ""
    prefilter: str = field(default="", compare=False, repr=False, hash=False)

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

    `databases` holds the hyperscan databases of the prefilter patterns that the loader
    built while it checked them, by mode (agent/detect/hsdb.py: "line" for the daemon's
    per-line match, "block" for scan), so the matcher never compiles one twice; a mode
    nobody asked for is not there, and the matcher builds it when first used."""

    signatures: tuple[Signature, ...] = ()
    databases: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

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


def config_key(sig_id: str, name: str = "") -> str:
    """The key a ConfigError about a signature's field names: `signature[ID].FIELD`."""
    return f"signature[{sig_id}].{name}" if name else f"signature[{sig_id}]"
