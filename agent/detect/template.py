"""Placeholder substitution for rule subjects and ladder parameters: `{name}` only.

Never a shell, never str.format (no attribute access, no format specs): a value is
pasted into a string that later fills one argv slot. `{{` and `}}` are literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_OPEN, _CLOSE = "{{", "}}"
_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.-]*)\}|[{}]")


def placeholders(template: str) -> list[str]:
    """The placeholder names in `template`; ValueError on a stray brace."""
    names = []
    for m in _FIELD.finditer(template):
        token = m.group(0)
        if token in (_OPEN, _CLOSE):
            continue
        if m.group(1) is None:
            raise ValueError(f"stray {token!r} in {template!r} (write {token * 2} for a brace)")
        names.append(m.group(1))
    return names


def render(template: str, values: Mapping[str, str], missing: str = "unknown") -> str:
    """Fill `{name}` from `values`; a name without a value becomes `missing`."""

    def fill(m: re.Match[str]) -> str:
        token = m.group(0)
        if token in (_OPEN, _CLOSE):
            return token[0]
        if m.group(1) is None:
            return token
        return values.get(m.group(1), missing)

    return _FIELD.sub(fill, template)
