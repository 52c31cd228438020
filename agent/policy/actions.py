"""What the policy and guards need to know about an action, from its remediation module.

`remediations/<name>.py` declares DISRUPTIVE, NEEDS_LEASE and PARAMS (STYLE.md 6). Until a
module exists, the action names the issue lists are still accepted with the conservative
traits below (params then cannot be checked); any other name is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import remediations
from remediations import ParamSpec, UnknownAction

#: action -> (disruptive, needs_lease) used only while its module is not installed
KNOWN_ACTIONS: Mapping[str, tuple[bool, bool]] = {
    "restart-service": (False, False),
    "reload-service": (False, False),
    "failover-service": (True, True),
    "node-restart": (True, True),
    "block-addresses": (False, False),
    "throttle-unit": (False, False),
    "stop-process": (False, False),
    "exec": (False, False),
    "page": (False, False),
}


@dataclass(frozen=True)
class ActionTraits:
    name: str
    disruptive: bool
    needs_lease: bool
    #: the module's declared parameters; None when the module is not installed yet
    params: Mapping[str, ParamSpec] | None
    #: what the module says its subject is (its check refuses a literal rung subject)
    subject: ParamSpec | None = None


def action_traits(name: str) -> ActionTraits:
    """Traits of `name`; UnknownAction if no module provides it and it is not a known
    action; ImportError if its module is broken."""
    if name in remediations.names():
        mod = remediations.load(name)
        return ActionTraits(name, bool(mod.DISRUPTIVE), bool(mod.NEEDS_LEASE), mod.PARAMS,
                            mod.SUBJECT)
    if name in KNOWN_ACTIONS:
        disruptive, lease = KNOWN_ACTIONS[name]
        return ActionTraits(name, disruptive, lease, None)
    known = sorted(set(remediations.names()) | set(KNOWN_ACTIONS))
    raise UnknownAction(f"unknown action {name!r}; known: {', '.join(known)}")
