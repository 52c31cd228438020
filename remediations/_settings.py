"""`[actions]` configuration: what each remediation may know about this site.

    [actions]
    protected_units = ["nodewarden.service", "ssh.service"]   # never throttled or stopped
    [actions.page]
    command = ["/usr/local/bin/page-oncall", "{problem}", "{subject}", "{message}"]
    [actions.exec.commands]
    revert-spamfilter = ["/usr/local/sbin/spamfilter-revert", "--host", "{hostname}"]

Each `[actions.NAME]` table must name an installed remediation, and its keys must be ones
the module declares in SETTINGS (docs/architecture.md, convention 6): a typo is refused with file,
key and reason,
not silently ignored. Values are strings, numbers, lists of strings or (for `exec`'s
`commands`) a table of argv lists; the remediation validates them when it plans, and the
preconditions guard reports what it refuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.schema import Section

DEFAULT_PROTECTED_UNITS: tuple[str, ...] = (
    "nodewarden.service", "ssh.service", "sshd.service", "systemd-journald.service",
    "systemd-logind.service", "dbus.service", "init.scope",
)


def _frozen(value: Any) -> object:
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class ActionSettings:
    """Per-action settings (`[actions.NAME]`) and the units no action may touch."""

    protected_units: tuple[str, ...] = DEFAULT_PROTECTED_UNITS
    per_action: Mapping[str, Mapping[str, object]] = field(
        default_factory=lambda: MappingProxyType({}))

def _ok_value(value: Any) -> bool:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    if isinstance(value, dict):
        return all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                   for v in value.values())
    return False


def parse_actions(top: Section) -> ActionSettings:
    """Parse `[actions]`; errors go to `top.errors` (file, key, reason)."""
    import remediations

    s = top.table("actions")
    protected = s.str_list("protected_units", DEFAULT_PROTECTED_UNITS)
    for i, glob in enumerate(protected):
        if not glob or not glob.isprintable():
            s.error(f"protected_units[{i}]", f"{glob!r} is not a unit name or glob")
    known = remediations.names()
    per_action: dict[str, Mapping[str, object]] = {}
    for name in [k for k in s.raw if k != "protected_units"]:
        sub = s.table(name)
        if name not in known:
            s.error(name, f"unknown action {name!r}; known: {', '.join(known)}")
            continue
        try:
            declared = remediations.load(name).SETTINGS
        except ImportError as exc:
            s.error(name, f"the remediation module is broken: {exc}")
            continue
        values: dict[str, object] = {}
        for key, value in sub.raw.items():
            sub.asked.add(sub.key(key))
            if key not in declared:
                sub.error(key, f"unknown setting for {name} (known: "
                               f"{', '.join(declared) or 'none'})")
            elif not _ok_value(value):
                sub.error(key, "must be a string, a number, a list of strings or a table "
                               f"of argv lists, not {type(value).__name__}")
            else:
                # what plan() would refuse mid-incident is refused now
                for reason in remediations.value_errors(declared[key], value):
                    sub.error(key, reason)
                values[key] = _frozen(value)
        per_action[name] = MappingProxyType(values)
    s.finish()
    return ActionSettings(tuple(protected), MappingProxyType(per_action))
