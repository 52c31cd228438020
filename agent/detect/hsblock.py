"""scan's block matcher in C (agent/detect/_hsblock.c), where it was built.

The hyperscan binding calls Python for every match, and mapping a match's offset to its
line is Python too: at 13% matched lines that was over half of `nodewarden scan`. The C
scanner runs the same block database (deserialized by the binding's own hyperscan
library) and gathers the matches per line in C. The extension is optional at install
(pyproject.toml: it needs gcc and Python's headers); without it, or if it cannot load
the library, the matcher maps the binding's matches itself, with the same result
(tests/unit/test_hsblock.py compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from importlib import import_module
from typing import Any, Literal, Protocol

from agent.detect.linegroups import Grouped, Row, plain_first_bytes


class FoundInBlock(Protocol):
    @property
    def newlines(self) -> int:
        """How many newlines the block holds (its lines, less one)."""

    def candidates(self, spans: dict[int, tuple[int, int]] | None = None
                   ) -> dict[int, set[int]]:
        """Line index -> signature indices that may match it (`Matcher.candidates`)."""

    def rows(self) -> list[Row]:
        """Each candidate line in order (agent/detect/linegroups.py: `Row`)."""

    def grouped(self, limit: int, kernel: Set[int]) -> Grouped:
        """The candidate lines grouped by message (agent/detect/linegroups.py)."""


class BlockScanner(Protocol):
    def scan(self, block: bytes) -> FoundInBlock:
        """The block through the database (the GIL released), not yet mapped to lines."""


def scanner(database: Any, groups: Sequence[frozenset[int]]
            ) -> BlockScanner | Literal[False]:
    """A C scanner of the hyperscan block `database` (`groups[id]`: the signature indices
    a match of pattern `id` names); False when the extension or library is missing."""
    try:
        import hyperscan

        from agent.detect._hsblock import BlockScanner as CScanner

        library = import_module("hyperscan._hs_ext").__file__
    except ImportError:
        return False
    if library is None:
        return False
    try:
        return CScanner(library, hyperscan.dumpb(database), groups, plain_first_bytes())
    except (ImportError, ValueError, MemoryError, hyperscan.error):
        return False
