"""Validation and argv building shared by the remediation modules (not an action itself).

Every value that reaches an argv is validated here first: unit names against a strict
pattern (never an option), addresses through `ipaddress`, durations as whole seconds.
Site commands are argv lists whose placeholders fill *whole* tokens only: nothing is
ever interpolated into a string a shell or a program would parse again.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.durations import EXAMPLES, parse_duration
from agent.model import Step
from remediations import ActionContext, InvalidParams

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNIT_TYPES = ("service", "socket", "target", "mount", "automount", "swap", "timer", "path",
              "slice", "scope")
_UNIT_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9@_.:-]{0,200}\.(" + "|".join(UNIT_TYPES) + r")$")
_UNIT_BASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@_.:-]{0,200}$")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")

#: what `systemctl` steps run as (found on the runner's sanitized PATH)
SYSTEMCTL = "systemctl"


def unit_name(text: str) -> str:
    """A systemd unit name safe as an argv token; "nfs-server" means "nfs-server.service"."""
    if _UNIT_BASE_RE.match(text) and not text.endswith(tuple("." + t for t in UNIT_TYPES)):
        text += ".service"
    if not _UNIT_RE.match(text):
        raise InvalidParams(
            f"unit {text!r} is not a unit name (letters, digits, @_.:- and a unit type "
            f"suffix such as .service; no leading '-')")
    return text


#: units no remediation may restart, reload, stop or throttle, whatever the configuration
#: says: the agent, the way in (sshd, getty), and the system's own plumbing
BUILTIN_PROTECTED = ("init.scope", "systemd-*", "dbus*", "ssh*", "sshd*", "nodewarden*",
                     "*getty*", "user-runtime-dir@*")
#: services that change the node's state: reboot, poweroff, halt, kexec, rescue and
#: emergency are reachable only through node-restart (its lease and its budget)
NODE_STATE_SERVICES = ("rescue.service", "emergency.service", "reboot*", "poweroff*",
                       "halt*", "kexec*", "*-reboot.service", "*-poweroff.service",
                       "*-halt.service", "*-kexec.service", "*-shutdown.service")


def refuse_protected(unit: str, ctx: ActionContext, extra: Sequence[str] = ()) -> None:
    """InvalidParams when `unit` matches the built-in list, `protected_units` or `extra`."""
    import fnmatch

    globs = (*BUILTIN_PROTECTED, *NODE_STATE_SERVICES, *ctx.protected_units, *extra)
    hit = next((g for g in globs if fnmatch.fnmatchcase(unit, g)), None)
    if hit is not None:
        why = "changes the node's state (node-restart only)" if hit in NODE_STATE_SERVICES \
            else "is a protected unit"
        raise InvalidParams(f"{unit} {why} (matches {hit!r})")


def service_unit(text: str, ctx: ActionContext, extra: Sequence[str] = ()) -> str:
    """The `.service` unit an action may restart, reload, stop or throttle.

    Whatever named it (a ladder, a finding's subject, an operator), it must be a service
    ("dovecot" means "dovecot.service"), never a target, socket, scope, slice or mount
    (`reboot.target` would reboot the host without a lease), and never protected."""
    unit = unit_name(text.strip())
    if not unit.endswith(".service"):
        raise InvalidParams(f"unit {unit} is not a .service: only services are restarted, "
                            f"reloaded, stopped or throttled (the node's state changes "
                            f"only through node-restart)")
    refuse_protected(unit, ctx, extra)
    return unit


def service_target(subject: str, params: Mapping[str, str]) -> str:
    """The canonical target of a unit action ("dovecot" = "dovecot.service"): cooldowns,
    budgets and flapping are keyed on it. A name that is not a unit stays as given (the
    plan refuses it anyway)."""
    text = (params.get("unit") or subject).strip()
    try:
        return unit_name(text)
    except InvalidParams:
        return text


def duration_s(text: str, what: str, lo: int = 1, hi: int = 7 * 86400) -> int:
    """'90', '90s', '15m', '1h', '2d' → seconds, within [lo, hi]."""
    parsed = parse_duration(text)
    if parsed is None:
        raise InvalidParams(f"{what} {text!r} is not a duration like {EXAMPLES}")
    seconds = round(parsed)
    if not lo <= seconds <= hi:
        raise InvalidParams(f"{what} {text!r} must be between {lo}s and {hi}s")
    return seconds


def integer(text: str, what: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidParams(f"{what} {text!r} is not an integer") from None
    if not lo <= value <= hi:
        raise InvalidParams(f"{what} {text!r} must be between {lo} and {hi}")
    return value


def address(text: str) -> IPAddress:
    """One IP address (v4-mapped IPv6 becomes IPv4, so allowlists apply to it)."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidParams(f"{text!r} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise InvalidParams(f"{text!r} is not an address or CIDR network") from None


# --------------------------------------------------------------------------- settings
def _setting(ctx: ActionContext, key: str) -> object:
    """A setting, its declared default applied (Remediation.settings); InvalidParams
    when a setting without a default is read unset."""
    if key not in ctx.settings:
        raise InvalidParams(f"setting {key} is not set")
    return ctx.settings[key]


def setting_str(ctx: ActionContext, key: str) -> str:
    value = _setting(ctx, key)
    if not isinstance(value, str):
        raise InvalidParams(f"setting {key} must be a string, not {type(value).__name__}")
    return value


def setting_list(ctx: ActionContext, key: str) -> tuple[str, ...]:
    value = ctx.settings.get(key, ())
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidParams(f"setting {key} must be a list of strings")
    return tuple(value)


def setting_int(ctx: ActionContext, key: str, lo: int, hi: int) -> int:
    value = _setting(ctx, key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidParams(f"setting {key} must be an integer between {lo} and {hi}")
    return value


def setting_argv(ctx: ActionContext, key: str) -> tuple[str, ...] | None:
    """A command argv from the settings (absolute program path), or None when unset."""
    if key not in ctx.settings:
        return None
    argv = setting_list(ctx, key)
    if not argv or not argv[0].startswith("/"):
        raise InvalidParams(f"setting {key} must be a non-empty argv list starting with an "
                            f"absolute program path")
    return argv


def fill_argv(
    template: Sequence[str], values: Mapping[str, str], allow_dash: bool = False
) -> tuple[str, ...]:
    """Replace tokens that are exactly `{name}` by `values[name]`; nothing else changes.

    A token that mixes text and a placeholder (`--unit={subject}`) is refused: a
    placeholder fills a whole argv slot or nothing. A value beginning with '-' is refused
    unless `allow_dash` (it could become an option of the site command).
    """
    out = []
    for token in template:
        whole = _PLACEHOLDER.fullmatch(token)
        if whole is None:
            if _PLACEHOLDER.search(token):
                raise InvalidParams(
                    f"argv token {token!r} mixes text and a placeholder; a placeholder must "
                    f"be a whole token such as '{{subject}}'")
            out.append(token)
            continue
        name = whole.group(1)
        if name not in values:
            raise InvalidParams(f"unknown placeholder {token!r}; known: "
                                + ", ".join("{" + k + "}" for k in sorted(values)))
        value = values[name]
        if not allow_dash and value.startswith("-"):
            raise InvalidParams(f"value {value!r} for {token} begins with '-' (an option)")
        if "\0" in value:
            raise InvalidParams(f"value for {token} contains a NUL byte")
        out.append(value)
    return tuple(out)


def helper(ctx: ActionContext, module: str, *args: str) -> tuple[str, ...]:
    """argv of one of the agent's own helpers: `python3 -m agent.execute.MODULE ARGS`."""
    return (ctx.python, "-m", f"agent.execute.{module}", *args)


def is_active_step(unit: str) -> Step:
    return Step((SYSTEMCTL, "is-active", "--quiet", "--", unit), 15.0,
                f"{unit} is active")


# --------------------------------------------------------------------------- value checks
# ParamSpec.check callables: each applies to one value the validation plan() applies, so
# the configuration is refused when it is loaded (file, key, reason), not mid-incident.
Check = Callable[[object], object]


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidParams(f"{what} must be a string, not {type(value).__name__}")
    return value


def a_duration(what: str, lo: int = 1, hi: int = 7 * 86400) -> Check:
    return lambda v: duration_s(_text(v, what), what, lo, hi)


def one_of(what: str, choices: Sequence[str]) -> Check:
    def check(v: object) -> str:
        text = _text(v, what)
        if text not in choices:
            raise InvalidParams(f"{what} {text!r} must be one of {', '.join(choices)}")
        return text
    return check


def an_integer(what: str, lo: int, hi: int) -> Check:
    def check(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise InvalidParams(f"{what} must be an integer between {lo} and {hi}")
        return integer(str(v), what, lo, hi)
    return check


def a_unit(what: str) -> Check:
    return lambda v: unit_name(_text(v, what))


def a_service(what: str) -> Check:
    """A `.service` no configuration can make acceptable to refuse: not a unit, not a
    service, a built-in protected unit, or one that changes the node's state."""
    bare = ActionContext(hostname="", state_dir=Path("/"), agent_pid=0, clock=None)  # type: ignore[arg-type]
    return lambda v: service_unit(_text(v, what), bare)


def an_argv(what: str) -> Check:
    """A command as an argv list whose program is an absolute path."""
    def check(v: object) -> tuple[str, ...]:
        if not isinstance(v, list | tuple) or not v or not all(isinstance(t, str) for t in v) \
                or not str(v[0]).startswith("/"):
            raise InvalidParams(f"{what} must be a non-empty argv list starting with an "
                                f"absolute program path, not {v!r}"[:200])
        fill_argv(v, dict.fromkeys(_PLACEHOLDER.findall(" ".join(v)), "x"))
        return tuple(v)
    return check


def argv_table(what: str) -> Check:
    """A table of name = argv list (exec's commands)."""
    def check(v: object) -> object:
        if not isinstance(v, Mapping) or not v:
            raise InvalidParams(f"{what} must be a table of name = [argv...]")
        for name, argv in v.items():
            an_argv(f"{what}.{name}")(argv)
        return v
    return check


def networks(what: str) -> Check:
    """A list of addresses and CIDR networks."""
    def check(v: object) -> list[IPNetwork]:
        if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
            raise InvalidParams(f"{what} must be a list of addresses and CIDRs")
        out = []
        for i, text in enumerate(v):
            try:
                out.append(network(text))
            except InvalidParams:
                raise InvalidParams(f"{what}[{i}] {text!r} is not an address or CIDR "
                                    f"network") from None
        return out
    return check


def addresses(what: str) -> Check:
    """Comma-separated addresses."""
    return lambda v: [address(a) for a in _text(v, what).split(",") if a.strip()]


def globs(what: str) -> Check:
    def check(v: object) -> object:
        if not isinstance(v, list | tuple) or not all(isinstance(x, str) and x for x in v):
            raise InvalidParams(f"{what} must be a list of unit name globs")
        return v
    return check


def an_absolute_path(what: str) -> Check:
    def check(v: object) -> str:
        text = _text(v, what)
        if not text.startswith("/") or not text.isprintable():
            raise InvalidParams(f"{what} {text!r} must be an absolute path")
        return text
    return check


def any_text(what: str) -> Check:
    return lambda v: _text(v, what)


def an_int_setting(what: str, lo: int, hi: int) -> Check:
    """An integer setting (a TOML integer, as setting_int reads it)."""
    def check(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise InvalidParams(f"setting {what} must be an integer between {lo} and {hi}")
        return v
    return check
