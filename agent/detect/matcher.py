"""The fast signature matcher: a cheap prefilter finds candidates, Python `re` confirms.

A failing disk can print thousands of lines a second, so a line that matches nothing
must cost about what reading it costs. Two engines give the same findings:

* **hyperscan** (default where it imports): one compiled database of every signature's
  regex finds which signatures can match; Python `re` then runs only those, to extract
  the named groups.
* **portable** (`NODEWARDEN_MATCHER=portable`, or hyperscan missing): an Aho-Corasick
  automaton (pyahocorasick) over each signature's required literals (derived from the
  regex by the catalog) picks the candidates; then the regex.

Either way the signature has the last word (agent/detect/catalog.py): its program must
match the line's program, and its regex (run by RE2, linear time) must match at the start
of the message, on `match_window(message)`. The prefilter runs over the raw line, which
contains the message, so it can only save work, never change a result. `match(line)`
serves one line (the daemon); `candidates(block)` serves a block of raw lines in one
engine call (scan, bench), and scan confirms each candidate with `confirm`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence, Set
from operator import itemgetter
from typing import Any, Literal, Protocol

from agent.detect import hsblock, hsdb
from agent.detect.dbcache import DatabaseCache, default_cache
from agent.detect.hsblock import FoundInBlock
from agent.detect.hsdb import ESCAPE, hyperscan_available
from agent.detect.linear import LinearRegex, LiteralSearch, encode
from agent.detect.linegroups import Grouped, Row, group_rows
from agent.detect.matchtemplate import MatchTemplate
from agent.detect.prefilter import pattern_of
from agent.detect.signature import MAX_MATCH_CHARS, Catalog, Signature, match_window
from agent.model import LogLine, SignatureMatch
from agent.sources.logrecord import parse_record

ENGINE_ENV = "NODEWARDEN_MATCHER"
ENGINES = ("hyperscan", "portable")


class _Prefilter(Protocol):
    def line(self, text: str) -> set[int]:
        """Indices of signatures that may match `text`."""

    def block_hits(self, block: bytes) -> list[tuple[int, frozenset[int]]]:
        """(end offset (exclusive), signature indices) of possible matches in `block`."""

    def scan_block(self, block: bytes) -> FoundInBlock:
        """The engine's pass over `block` (it may run in a thread: agent/detect/
        prefetch.py); what it found is mapped to lines by `candidates`."""

    def releases_gil(self) -> bool:
        """Whether `scan_block` lets other threads run Python meanwhile."""


class _HyperscanPrefilter:
    """The hyperscan databases of the prefilter patterns (agent/detect/hsdb.py): the
    per-line one for `line`, the block one for `block_hits`. Each is the catalog's when
    the loader built it, else built (or loaded from the cache) when first used."""

    def __init__(self, sigs: Sequence[Signature], databases: Mapping[str, Any],
                 cache: DatabaseCache | None) -> None:
        self._patterns = [pattern_of(s) for s in sigs]
        self._databases = dict(databases)
        self._cache = cache
        # the last id is the escape: a line holding one is a candidate for every signature
        self._single = [frozenset((i,)) for i in range(len(sigs))]
        self._single.append(frozenset(range(len(sigs))))
        #: the C block scanner (agent/detect/hsblock.py), built on first use; False: none
        self._block_scanner: hsblock.BlockScanner | Literal[False] | None = None

    def database(self, mode: str) -> Any:
        db = self._databases.get(mode)
        if db is None:
            db = self._databases[mode] = hsdb.build(self._patterns, mode, self._cache)
        return db

    def line(self, text: str) -> set[int]:
        found: set[int] = set()

        def on_match(sig: int, _from: int, _to: int, _flags: int, _ctx: Any) -> None:
            found.add(sig)

        self.database(hsdb.LINE).scan(text.encode("utf-8", "surrogatepass"),
                                      match_event_handler=on_match)
        return found

    def block_hits(self, block: bytes) -> list[tuple[int, frozenset[int]]]:
        hits: list[tuple[int, frozenset[int]]] = []
        append = hits.append
        single = self._single

        def on_match(sig: int, _from: int, to: int, _flags: int, _ctx: Any) -> None:
            append((to, single[sig]))

        self.database(hsdb.BLOCK).scan(block, match_event_handler=on_match)
        return hits

    def _scanner(self) -> hsblock.BlockScanner | Literal[False]:
        if self._block_scanner is None:
            self._block_scanner = hsblock.scanner(self.database(hsdb.BLOCK), self._single)
        return self._block_scanner

    def releases_gil(self) -> bool:
        return bool(self._scanner())

    def scan_block(self, block: bytes) -> FoundInBlock:
        scanner = self._scanner()
        if scanner:
            return scanner.scan(block)
        return MappedHits(block, self.block_hits(block))


class _AhoCorasickPrefilter:
    """The portable engine: the required literals, a literal mapping to the signatures
    that need it. A block is searched for the first literal with one RE2 automaton over
    all of them (agent/detect/linear.py: LiteralSearch, at memory speed, in C); only the
    lines it stops in are walked by Aho-Corasick (pyahocorasick) to say which literals,
    so Python runs per candidate line, not per byte or per hit of a benign line."""

    def __init__(self, sigs: Sequence[Signature]) -> None:
        import ahocorasick

        owners: dict[str, list[int]] = {}
        for i, sig in enumerate(sigs):
            for lit in sig.literals:
                owners.setdefault(lit, []).append(i)
        self._text = ahocorasick.Automaton()
        self._bytes = ahocorasick.Automaton()  # literals as latin-1 views of their UTF-8
        for lit, idx in owners.items():
            self._text.add_word(lit, frozenset(idx))
            self._bytes.add_word(lit.encode().decode("latin-1"), frozenset(idx))
        # a line holding an escape is a candidate for every signature (blocks only)
        self._bytes.add_word(ESCAPE.decode("latin-1"), frozenset(range(len(sigs))))
        self._text.make_automaton()
        self._bytes.make_automaton()
        self._empty = not owners
        self._search = None if self._empty else LiteralSearch(
            [*(lit.encode() for lit in owners), ESCAPE])

    def line(self, text: str) -> set[int]:
        found: set[int] = set()
        if self._empty:
            return found
        for _end, idx in self._text.iter(text):
            found.update(idx)
        return found

    def block_hits(self, block: bytes) -> list[tuple[int, frozenset[int]]]:
        hits: list[tuple[int, frozenset[int]]] = []
        if self._search is None:
            return hits
        find = self._search.find
        walk = self._bytes.iter
        pos, size = 0, len(block)
        while pos < size:
            at = find(block, pos)
            if at < 0:
                break
            # the line that holds it: Aho-Corasick says which literals (latin-1 maps each
            # byte to one character, so offsets stay byte offsets)
            nl = block.rfind(b"\n", pos, at)
            start = pos if nl < 0 else nl + 1
            end = block.find(b"\n", at)
            end = size if end < 0 else end
            hits.extend((start + last + 1, idx)
                        for last, idx in walk(block[start:end].decode("latin-1")))
            pos = end + 1
        return hits

    def releases_gil(self) -> bool:
        return False

    def scan_block(self, block: bytes) -> FoundInBlock:
        return MappedHits(block, self.block_hits(block))


def _compiled(sig: Signature) -> LinearRegex:
    if sig.compiled is None:
        raise ValueError(f"signature {sig.id} was not compiled (not loaded by the loader)")
    return sig.compiled


def choose_engine(engine: str | None = None) -> str:
    """The engine asked for (argument, then NODEWARDEN_MATCHER), else the fastest present."""
    wanted = engine or os.environ.get(ENGINE_ENV) or ""
    if wanted and wanted not in ENGINES:
        raise ValueError(f"unknown matcher engine {wanted!r}: one of {', '.join(ENGINES)}")
    if wanted == "portable":
        return "portable"
    if hyperscan_available():
        return "hyperscan"
    if wanted == "hyperscan":
        raise ValueError("matcher engine hyperscan asked for, but hyperscan cannot be imported")
    return "portable"


class Matcher:
    """Matches log lines against a catalog; see the module docstring for the engines."""

    def __init__(self, catalog: Catalog, engine: str | None = None, *,
                 cache: DatabaseCache | Literal["env"] | None = "env") -> None:
        self.catalog = catalog
        self.engine = choose_engine(engine)
        self._sigs = catalog.signatures
        self._by_source: dict[str, frozenset[int]] = {}
        for i, sig in enumerate(self._sigs):
            self._by_source[sig.source] = self._by_source.get(sig.source, frozenset()) | {i}
        #: per signature: its regex's match, and its program test (None: any line)
        self._checks = [(_compiled(sig).match, None if sig.compiled_program is None
                         else sig.takes_program) for sig in self._sigs]
        self._matches = [MatchTemplate(sig) for sig in self._sigs]
        self.kernel_indices = self._by_source.get("kmsg", frozenset())
        self._prefilter: _Prefilter | None = None
        if self._sigs and self.engine == "hyperscan":
            self._prefilter = _HyperscanPrefilter(
                self._sigs, catalog.databases, default_cache() if isinstance(cache, str) else cache)
        elif self._sigs:
            self._prefilter = _AhoCorasickPrefilter(self._sigs)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_source))

    def match(self, line: LogLine) -> list[SignatureMatch]:
        """Every signature of `line.source` that matches `line`, in catalog order."""
        if self._prefilter is None or line.source not in self._by_source:
            return []
        text = line.text
        if len(text) <= MAX_MATCH_CHARS:
            candidates = self._prefilter.line(text)
            # the flood case: most lines match nothing, and cost only the prefilter
            return self.confirm(line, candidates) if candidates else []
        # a long line: what the regexes see is the head and tail of its message
        program, message = self._split(line)
        window = match_window(message)
        candidates = self._prefilter.line(window)
        return self._confirm(line, candidates, program, window) if candidates else []

    @staticmethod
    def _split(line: LogLine) -> tuple[bytes | None, str]:
        if line.source == "kmsg":
            return None, line.text
        record = parse_record(line.text)
        return encode(record.program), record.message

    def confirm(self, line: LogLine, candidates: Iterable[int]) -> list[SignatureMatch]:
        """Run the candidate signatures (indices) that apply to `line.source`: program,
        then the regex at the start of the message."""
        program, message = self._split(line)
        return self._confirm(line, candidates, program, match_window(message))

    def _confirm(self, line: LogLine, candidates: Iterable[int], program: bytes | None,
                 window: str) -> list[SignatureMatch]:
        mine = self._by_source.get(line.source)
        if not mine:
            return []
        chosen = mine.intersection(candidates)
        if not chosen:
            return []
        data = encode(window)
        out: list[SignatureMatch] = []
        checks = self._checks
        for i in sorted(chosen) if len(chosen) > 1 else chosen:
            match, takes_program = checks[i]
            if takes_program is not None and not takes_program(program):
                continue
            groups = match(data)
            if groups is not None:
                out.append(self._matches[i].new(line, groups))
        return out

    def confirm_kernel(self, line: LogLine, candidates: set[int] | frozenset[int]
                       ) -> list[SignatureMatch]:
        """`confirm(line, candidates)` for a kernel line (source kmsg) whose candidates
        are all kernel signatures (which test no program): scan's common case, in fewer
        steps."""
        text = line.text
        data = encode(text if len(text) <= MAX_MATCH_CHARS else match_window(text))
        out: list[SignatureMatch] = []
        checks = self._checks
        for i in sorted(candidates) if len(candidates) > 1 else candidates:
            groups = checks[i][0](data)
            if groups is not None:
                out.append(self._matches[i].new(line, groups))
        return out

    def sources_of(self, candidates: Iterable[int]) -> set[str]:
        """The sources of the given signature indices."""
        return {self._sigs[i].source for i in candidates}

    @property
    def all_indices(self) -> frozenset[int]:
        return frozenset(range(len(self._sigs)))

    def candidates(self, block: bytes, spans: dict[int, tuple[int, int]] | None = None
                   ) -> dict[int, set[int]]:
        """Line index -> indices of signatures that may match it, for a block of lines.

        `block` is lines joined by `\\n`; one engine call covers the whole block. A
        candidate is only a maybe: confirm it with `confirm`. Every signature that would
        match a line's message text is a candidate for that line, because the prefilter
        runs over the raw line, which contains the text; a line holding an ESCAPE (a kmsg
        record's escaped byte: its text is unescaped) is a candidate for every signature.
        `spans`, when given, gets each candidate line's (start, end) offsets in `block`.
        """
        return self.scan_block(block).candidates(spans)

    def block_pass_releases_gil(self) -> bool:
        """Whether `scan_block`'s engine pass runs without the GIL (the C scanner): only
        then is it worth running in a thread beside the caller's Python."""
        return self._prefilter is not None and self._prefilter.releases_gil()

    def scan_block(self, block: bytes) -> FoundInBlock:
        """`candidates` in two steps: the engine's pass (safe to run in another thread
        while this one confirms, one block at a time), then `.candidates(spans)`."""
        if self._prefilter is None or not block:
            return MappedHits(block, [])
        return self._prefilter.scan_block(block)


class MappedHits:
    """An engine's (end offset, signature indices) hits in a block, mapped to its lines
    in Python (the C scanner does the same in C: agent/detect/hsblock.py)."""

    def __init__(self, block: bytes, hits: list[tuple[int, frozenset[int]]]) -> None:
        self._block = block
        self._hits = hits

    @property
    def newlines(self) -> int:
        return self._block.count(b"\n")

    def rows(self) -> list[Row]:
        spans: dict[int, tuple[int, int]] = {}
        found = self.candidates(spans)
        return [(i, spans[i][0], -2, spans[i][1], cands) for i, cands in found.items()]

    def grouped(self, limit: int, kernel: Set[int]) -> Grouped:
        return group_rows(self._block, self.rows(), limit, kernel)

    def candidates(self, spans: dict[int, tuple[int, int]] | None = None
                   ) -> dict[int, set[int]]:
        hits, block = self._hits, self._block
        if not hits:
            return {}
        hits.sort(key=itemgetter(0))
        out: dict[int, set[int]] = {}
        line = 0
        pos = 0
        end = -1  # the offset of the newline that ends the line of the last hit
        count = block.count
        find = block.find
        rfind = block.rfind
        current: set[int] = set()
        for to, sig in hits:
            at = to - 1  # the match's last byte
            if at <= end:
                current.update(sig)  # another hit in the same line
                continue
            line += count(b"\n", pos, at)
            pos = at
            end = find(b"\n", at)
            if end < 0:
                end = len(block)
            current = out[line] = set(sig)
            if spans is not None:
                spans[line] = (rfind(b"\n", 0, at) + 1, end)
        return out
