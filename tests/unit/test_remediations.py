"""Every remediation: declarations, exact argv of its plan, refused parameters, docs."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import psutil
import pytest

from agent.boot import read_boot_id
from agent.clock import FakeClock
from agent.execute import haproxy_cmd, intent, stop_process, unit_props
from agent.model import Step, StepResult
from remediations import (
    ActionContext,
    InvalidParams,
    ParamSpec,
    ReadOnlyRunner,
    UnknownAction,
    build_plan,
    load,
    module_name,
    names,
    target_of,
    value_errors,
)
from remediations._common import fill_argv
from remediations._docs import expected_files
from remediations.page import clean
from remediations.stop_process import StopProcess

DOCS = Path(__file__).resolve().parents[2] / "docs" / "remediations"
PY = "/usr/bin/python3"
EXPECTED = {"block-addresses", "exec", "failover-service", "node-restart", "page",
            "reload-service", "restart-service", "stop-process", "throttle-unit"}


def ctx(settings: Mapping[str, object] | None = None, runner: ReadOnlyRunner | None = None,
        protected: tuple[str, ...] = ("nodewarden.service", "ssh.service")) -> ActionContext:
    return ActionContext("mail1", Path("/var/lib/nodewarden"), 4242, FakeClock(),
                         runner=runner, settings=MappingProxyType(dict(settings or {})),
                         protected_units=protected, python=PY)


def argvs(action: str, subject: str, params: Mapping[str, str] | None = None,
          settings: Mapping[str, object] | None = None) -> list[tuple[str, ...]]:
    plan = build_plan(action, subject, params or {}, ctx(settings))
    return [s.argv for s in (*plan.steps, *plan.verify)]


# --------------------------------------------------------------------------- registry
def test_registry_names_every_shipped_action() -> None:
    assert set(names()) == EXPECTED


def test_unknown_action_is_refused() -> None:
    with pytest.raises(UnknownAction, match="known: block-addresses"):
        load("reboot-everything")


@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_every_module_describes_itself(action: str) -> None:
    r = load(action)
    assert action == r.NAME
    assert type(r).__module__ == f"remediations.{module_name(action)}"
    assert r.SUMMARY and "\n" not in r.SUMMARY and len(r.SUMMARY) < 100
    assert isinstance(r.DISRUPTIVE, bool) and isinstance(r.NEEDS_LEASE, bool)
    assert all(isinstance(p, ParamSpec) and p.description for p in r.PARAMS.values())
    assert all(isinstance(p, ParamSpec) and p.description for p in r.SETTINGS.values())
    doc = inspect.cleandoc(r.runbook)
    for section in ("## When", "## Verify", "## Undo", "## Safety"):
        assert section in doc, f"{action}: runbook lacks {section}"
    assert callable(r.plan) and callable(r.preconditions) and callable(r.target)
    assert isinstance(r.SUBJECT, ParamSpec) and r.SUBJECT.description
    # the documented example passes every check the configuration applies
    assert value_errors(r.SUBJECT, r.EXAMPLE.subject) == []
    for key, value in r.EXAMPLE.params.items():
        assert value_errors(r.PARAMS[key], value) == [], key
    for name, setting in r.EXAMPLE.settings.items():
        assert value_errors(r.SETTINGS[name], setting) == [], name
    # each fact once: what is left to its own module is declared there, the rest inherited
    assert (r.BUDGET is None) == (action == "page")  # a page is never budgeted
    for name, spec in r.SETTINGS.items():  # a default is applied wherever it plans
        if spec.setting_default is not None:
            assert r.settings({})[name] == spec.setting_default


@pytest.mark.parametrize(("action", "subject", "params", "target"), [
    ("restart-service", "dovecot", {}, "dovecot.service"),
    ("restart-service", "dovecot.service", {}, "dovecot.service"),
    ("restart-service", "x", {"unit": "postfix"}, "postfix.service"),
    ("reload-service", " postfix ", {}, "postfix.service"),
    ("throttle-unit", "spamd", {}, "spamd.service"),
    ("stop-process", "prov", {"unit": "prov"}, "prov.service"),
    ("stop-process", " 812 ", {}, "812"),
    ("block-addresses", "2001:DB8:0::7, 192.0.2.1", {}, "2001:db8::7,192.0.2.1"),
    ("block-addresses", "x", {"addresses": "::ffff:192.0.2.9"}, "192.0.2.9"),
    ("page", "raid-degraded md0 on nas1", {}, "raid-degraded md0 on nas1"),
    ("node-restart", "nas1", {}, "nas1"),
])
def test_target_is_one_spelling_of_what_is_acted_on(
        action: str, subject: str, params: dict[str, str], target: str) -> None:
    """Cooldowns, budgets and flapping are keyed on it: `dovecot` = `dovecot.service`."""
    assert target_of(action, subject, params) == target


def test_disruptive_actions_need_a_lease() -> None:
    flags = {a: (load(a).DISRUPTIVE, load(a).NEEDS_LEASE) for a in names()}
    assert {a for a, (d, _) in flags.items() if d} == {"failover-service", "node-restart"}
    assert all(lease == disruptive for disruptive, lease in flags.values())


def test_docs_are_generated_from_the_modules() -> None:
    """docs/remediations/ == `python3 -m remediations._docs docs/remediations`."""
    for name, text in expected_files().items():
        path = DOCS / name
        assert path.exists(), f"missing {path}: run python3 -m remediations._docs"
        assert path.read_text() == text, f"{path} is stale: run python3 -m remediations._docs"
    assert {p.name for p in DOCS.glob("*.md")} == set(expected_files())
    assert set(expected_files()) == {"README.md", *(f"{a}.md" for a in EXPECTED)}


# --------------------------------------------------------------------------- argv tables
NFT_ENSURE = (
    "nft", "add", "table", "inet", "nodewarden", ";",
    "add", "set", "inet", "nodewarden", "blocked4", "{", "type", "ipv4_addr", ";", "flags",
    "timeout", ";", "size", "65536", ";", "}", ";",
    "add", "set", "inet", "nodewarden", "blocked6", "{", "type", "ipv6_addr", ";", "flags",
    "timeout", ";", "size", "65536", ";", "}", ";",
    "add", "chain", "inet", "nodewarden", "input", "{", "type", "filter", "hook", "input",
    "priority", "filter", "-", "10", ";", "policy", "accept", ";", "}", ";",
    "flush", "chain", "inet", "nodewarden", "input", ";",
    "add", "rule", "inet", "nodewarden", "input", "ip", "saddr", "@blocked4", "drop", ";",
    "add", "rule", "inet", "nodewarden", "input", "ip6", "saddr", "@blocked6", "drop",
)
PAGER = ["/usr/local/bin/page-oncall", "{problem}", "{subject}", "{message}"]

CASES: list[tuple[str, str, dict[str, str], dict[str, object], list[tuple[str, ...]]]] = [
    ("restart-service", "dovecot", {}, {}, [
        ("systemctl", "restart", "--", "dovecot.service"),
        ("systemctl", "is-active", "--quiet", "--", "dovecot.service")]),
    ("restart-service", "x", {"unit": "nfs-server.service"}, {}, [
        ("systemctl", "restart", "--", "nfs-server.service"),
        ("systemctl", "is-active", "--quiet", "--", "nfs-server.service")]),
    ("reload-service", "postfix@-.service", {}, {}, [
        ("systemctl", "reload", "--", "postfix@-.service"),
        ("systemctl", "is-active", "--quiet", "--", "postfix@-.service")]),
    ("reload-service", "spamd", {"fallback": "restart"}, {}, [
        ("systemctl", "reload-or-restart", "--", "spamd.service"),
        ("systemctl", "is-active", "--quiet", "--", "spamd.service")]),
    ("throttle-unit", "prov.service", {"cpu_quota": "35", "io_weight": "50"}, {}, [
        ("systemctl", "set-property", "--runtime", "--", "prov.service", "CPUQuota=35%",
         "IOWeight=50"),
        (PY, "-m", "agent.execute.unit_props", "prov.service", "CPUQuota=35%", "IOWeight=50")]),
    ("block-addresses", "203.0.113.5, ::ffff:198.51.100.1,2001:db8::7",
     {"timeout": "15m"}, {}, [
        NFT_ENSURE,
        ("nft", "add", "element", "inet", "nodewarden", "blocked4", "{", "203.0.113.5",
         "timeout", "900s", ",", "198.51.100.1", "timeout", "900s", "}"),
        ("nft", "add", "element", "inet", "nodewarden", "blocked6", "{", "2001:db8::7",
         "timeout", "900s", "}"),
        ("nft", "get", "element", "inet", "nodewarden", "blocked4", "{", "203.0.113.5", ",",
         "198.51.100.1", "}"),
        ("nft", "get", "element", "inet", "nodewarden", "blocked6", "{", "2001:db8::7", "}")]),
    ("block-addresses", "x", {"addresses": "203.0.113.9"}, {}, [
        NFT_ENSURE,
        ("nft", "add", "element", "inet", "nodewarden", "blocked4", "{", "203.0.113.9",
         "timeout", "3600s", "}"),
        ("nft", "get", "element", "inet", "nodewarden", "blocked4", "{", "203.0.113.9", "}")]),
    ("failover-service", "imap", {"server": "imap/mail1"}, {}, [
        (PY, "-m", "agent.execute.haproxy_cmd", "send", "/run/haproxy/admin.sock",
         "set server imap/mail1 state drain"),
        (PY, "-m", "agent.execute.haproxy_cmd", "expect", "/run/haproxy/admin.sock",
         "imap/mail1", "drain")]),
    ("failover-service", "imap", {}, {"via": "keepalived"}, [
        ("systemctl", "stop", "--", "keepalived.service"),
        ("systemctl", "is-active", "--quiet", "--", "keepalived.service")]),
    ("failover-service", "imap", {"via": "site"},
     {"command": ["/usr/local/bin/move", "{subject}", "{hostname}"]}, [
        ("/usr/local/bin/move", "imap", "mail1")]),
    ("node-restart", "nas-a1", {"reason": "hung nfsd\ttasks"}, {}, [
        (PY, "-m", "agent.execute.intent", "write", "--state-dir=/var/lib/nodewarden",
         "--action=node-restart", "--subject=nas-a1", "--reason=hung nfsd tasks"),
        ("systemctl", "reboot")]),
    ("node-restart", "nas-a1", {}, {"drain_command": ["/usr/local/bin/drain", "{hostname}"]}, [
        ("/usr/local/bin/drain", "mail1"),
        (PY, "-m", "agent.execute.intent", "write", "--state-dir=/var/lib/nodewarden",
         "--action=node-restart", "--subject=nas-a1", "--reason=node-restart by nodewarden"),
        ("systemctl", "reboot")]),
    ("stop-process", "31337", {"grace": "5s"}, {}, [
        (PY, "-m", "agent.execute.stop_process", "stop", "--pid", "31337", "--grace", "5",
         "--refuse-pid", "1", "--refuse-pid", "4242", "--protect", "nodewarden.service",
         "--protect", "ssh.service"),
        (PY, "-m", "agent.execute.stop_process", "gone", "--pid", "31337")]),
    ("stop-process", "provision.py", {}, {}, [
        (PY, "-m", "agent.execute.stop_process", "stop", "--name", "provision.py", "--grace",
         "10", "--refuse-pid", "1", "--refuse-pid", "4242", "--protect", "nodewarden.service",
         "--protect", "ssh.service"),
        (PY, "-m", "agent.execute.stop_process", "gone", "--name", "provision.py")]),
    ("exec", "spamd", {"command": "revert", "arg": "v2"},
     {"commands": {"revert": ["/usr/sbin/revert", "--to", "{arg}", "{subject}", "{x"]}}, [
        ("/usr/sbin/revert", "--to", "v2", "spamd", "{x")]),
    ("page", "nas-a1", {"problem": "mce", "message": "bank 4"}, {}, [
        ("logger", "-s", "-t", "nodewarden", "-p", "user.crit", "--",
         "PAGE host=mail1 problem=mce subject=nas-a1: bank 4")]),
    ("page", "-rf", {"problem": "raid-degraded", "severity": "error"}, {"command": PAGER}, [
        ("logger", "-s", "-t", "nodewarden", "-p", "user.err", "--",
         "PAGE host=mail1 problem=raid-degraded subject=rf: nodewarden needs a person"),
        ("/usr/local/bin/page-oncall", "raid-degraded", "rf", "nodewarden needs a person")]),
]


@pytest.mark.parametrize(("action", "subject", "params", "settings", "expected"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_plan_argv(action: str, subject: str, params: dict[str, str],
                   settings: dict[str, object], expected: list[tuple[str, ...]]) -> None:
    assert argvs(action, subject, params, settings) == expected


def test_plans_are_pure() -> None:
    for action in names():
        r = load(action)
        a = build_plan(action, r.EXAMPLE.subject, r.EXAMPLE.params, ctx(r.EXAMPLE.settings))
        b = build_plan(action, r.EXAMPLE.subject, r.EXAMPLE.params, ctx(r.EXAMPLE.settings))
        assert a == b and a.action == action and a.steps


def test_step_flags() -> None:
    page = build_plan("page", "s", {}, ctx({"command": PAGER}))
    assert page.steps[0].ok_exit == (0, 1)  # logging must not stop the page
    assert build_plan("page", "s", {}, ctx()).steps[0].ok_exit == (0,)
    keep = build_plan("failover-service", "imap", {"via": "keepalived"}, ctx())
    assert keep.verify[0].ok_exit == (3,) and keep.disruptive
    stop = build_plan("stop-process", "77", {"grace": "30s"}, ctx())
    assert stop.steps[0].timeout_s > 30


def test_block_addresses_summary_says_what_was_left_out() -> None:
    plan = build_plan("block-addresses", "127.0.0.9,192.0.2.1,203.0.113.1,203.0.113.2",
                      {}, ctx({"allowlist": ["192.0.2.0/24"], "max_addresses": 1}))
    assert plan.summary == ("block 1 address(es) for 3600s; not blocked (allowlisted): "
                            "127.0.0.9, 192.0.2.1; 1 more left out (max_addresses 1)")
    assert plan.steps[1].argv[-4:] == ("203.0.113.1", "timeout", "3600s", "}")


# --------------------------------------------------------------------------- refusals
BAD: list[tuple[str, str, dict[str, str], dict[str, object], str]] = [
    ("restart-service", "--force", {}, {}, "is not a unit name"),
    ("restart-service", "x", {"unit": "-H.service"}, {}, "is not a unit name"),
    ("restart-service", "a b.service", {}, {}, "is not a unit name"),
    ("restart-service", "x;reboot", {}, {}, "is not a unit name"),
    ("restart-service", "x", {"timeout": "1y"}, {}, "is not a duration"),
    ("restart-service", "x", {"timeout": "0s"}, {}, "must be between"),
    ("reload-service", "x", {"fallback": "always"}, {}, "'always' must be one of none, restart"),
    # a process or cgroup named like a unit must never reach systemctl as anything but a
    # .service, and never as one that changes the node's state (issue 7)
    ("restart-service", "reboot.target", {}, {}, "is not a .service"),
    ("restart-service", "poweroff.target", {}, {}, "is not a .service"),
    ("restart-service", "ssh.socket", {}, {}, "is not a .service"),
    ("restart-service", "x", {"unit": "kexec.target"}, {}, "is not a .service"),
    ("restart-service", "nodewarden", {}, {}, "protected unit"),
    ("restart-service", "sshd.service", {}, {}, "protected unit"),
    ("restart-service", "systemd-reboot.service", {}, {}, "protected unit"),
    ("restart-service", "rescue.service", {}, {}, "node's state"),
    ("restart-service", "emergency", {}, {}, "node's state"),
    ("restart-service", "kexec-load.service", {}, {}, "node's state"),
    ("reload-service", "halt.target", {}, {}, "is not a .service"),
    ("reload-service", "dbus.service", {}, {}, "protected unit"),
    ("throttle-unit", "session-4.scope", {}, {}, "is not a .service"),
    ("throttle-unit", "user.slice", {}, {}, "is not a .service"),
    ("stop-process", "x", {"unit": "session-4.scope"}, {}, "is not a .service"),
    ("stop-process", "x", {"unit": "reboot.target"}, {}, "is not a .service"),
    ("stop-process", "x", {"unit": "nodewarden.service"}, {}, "protected unit"),
    ("throttle-unit", "ssh.service", {}, {}, "protected unit"),
    ("throttle-unit", "systemd-journald.service", {}, {}, "protected unit"),
    ("throttle-unit", "dbus.service", {}, {}, "protected unit"),
    ("throttle-unit", "x", {"cpu_quota": "lots"}, {}, "not a percentage"),
    ("throttle-unit", "x", {"cpu_quota": "0%"}, {}, "between 1 and 10000"),
    ("throttle-unit", "x", {"io_weight": "0"}, {}, "between 1 and 10000"),
    ("block-addresses", "not-an-ip", {}, {}, "is not an IP address"),
    ("block-addresses", "203.0.113.0/24", {}, {}, "is not an IP address"),
    ("block-addresses", "0.0.0.0", {}, {}, "unspecified, multicast or link-local"),
    ("block-addresses", "224.0.0.1", {}, {}, "unspecified, multicast or link-local"),
    ("block-addresses", "127.0.0.1", {}, {}, "every address is allowlisted"),
    ("block-addresses", "::1,::ffff:127.0.0.2", {}, {}, "every address is allowlisted"),
    ("block-addresses", "192.0.2.9", {}, {"allowlist": ["192.0.2.0/24"]}, "allowlisted"),
    ("block-addresses", "192.0.2.9", {}, {"allowlist": ["bogus"]}, "not an address or CIDR"),
    ("block-addresses", " , ", {}, {}, "no addresses"),
    ("block-addresses", "192.0.2.9", {"timeout": "30d"}, {}, "must be between"),
    ("block-addresses", "192.0.2.9", {}, {"table": "x;flush ruleset"}, "identifier"),
    ("failover-service", "imap", {"server": "imap/s1;shutdown sessions"}, {}, "BACKEND/SERVER"),
    ("failover-service", "imap", {"server": "imap"}, {}, "BACKEND/SERVER"),
    ("failover-service", "imap", {"server": "a/b", "socket": "admin.sock"}, {}, "absolute"),
    ("failover-service", "imap", {"via": "dns"}, {}, "must be one of"),
    ("failover-service", "imap", {"via": "site"}, {}, "needs the `command` setting"),
    ("failover-service", "imap", {"via": "site"}, {"command": ["move"]}, "absolute program"),
    ("node-restart", "h", {"drain": "yes"}, {}, "needs the drain_command"),
    ("node-restart", "h", {"drain": "maybe"}, {}, "must be one of auto, yes, no"),
    ("stop-process", "1", {}, {}, "init"),
    ("stop-process", "4242", {}, {}, "the agent itself"),
    ("stop-process", "0", {}, {}, "is not a process"),
    ("stop-process", "-9", {}, {}, "neither a PID nor a process name"),
    ("stop-process", "../bin/x", {}, {}, "neither a PID nor a process name"),
    ("stop-process", "a-very-long-process-name", {}, {}, "neither a PID"),
    ("exec", "s", {"command": "nope"}, {"commands": {"x": ["/bin/x"]}}, "no site command"),
    ("exec", "s", {"command": "x"}, {"commands": {"x": ["x"]}}, "absolute path"),
    ("exec", "s", {"command": "x"}, {"commands": {"x": ["/bin/x", "--unit={subject}"]}},
     "mixes text and a placeholder"),
    ("exec", "--all", {"command": "x"}, {"commands": {"x": ["/bin/x", "{subject}"]}},
     "begins with '-'"),
    ("exec", "s", {"command": "x"}, {"commands": {"x": ["/bin/x", "{password}"]}},
     "unknown placeholder"),
    ("page", "s", {"severity": "meh"}, {}, "must be one of"),
    ("page", "s", {}, {"command": "/bin/page {subject}"}, "list of strings"),
]


@pytest.mark.parametrize(("action", "subject", "params", "settings", "why"), BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_params_are_refused(action: str, subject: str, params: dict[str, str],
                                settings: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidParams, match=why.replace("(", r"\(").replace(";", ";")):
        build_plan(action, subject, params, ctx(settings))
    reasons = load(action).preconditions(subject, params, ctx(settings))
    assert reasons and any(why.split("(", 1)[0] in r for r in reasons)


def test_unknown_and_missing_params_are_refused() -> None:
    with pytest.raises(InvalidParams, match="unknown parameter 'force'"):
        build_plan("restart-service", "x", {"force": "yes"}, ctx())
    with pytest.raises(InvalidParams, match="parameter 'command' is required"):
        build_plan("exec", "x", {}, ctx())


@pytest.mark.parametrize(("template", "values", "expected"), [
    (["/bin/a", "{x}"], {"x": "1 2; rm"}, ("/bin/a", "1 2; rm")),
    (["/bin/a", "{x}", "{x}"], {"x": ""}, ("/bin/a", "", "")),
    (["/bin/a", "{}", "{X}", "x{"], {}, ("/bin/a", "{}", "{X}", "x{")),
])
def test_fill_argv_fills_whole_tokens_only(template: list[str], values: dict[str, str],
                                           expected: tuple[str, ...]) -> None:
    assert fill_argv(template, values) == expected


@pytest.mark.parametrize(("raw", "cleaned"), [
    ("--rm -rf", "rm -rf"), ("a\nb\x00c", "a b c"), ("x" * 600, "x" * 500), ("  -  ", ""),
    ("- -x", "x"), (" - - -y", "y"),
])
def test_page_values_are_cleaned(raw: str, cleaned: str) -> None:
    assert clean(raw) == cleaned


@pytest.mark.parametrize("text", ["", "- -x", "--", " -  -x"])
def test_a_page_is_never_refused_for_its_text(text: str) -> None:
    """The last rung of every ladder: whatever a finding's subject or message, it plans."""
    c = ctx({"command": ["/usr/local/bin/page-oncall", "{subject}", "{message}"]})
    plan = build_plan("page", text, {"message": text}, c)
    sent = plan.steps[-1].argv
    assert sent[0] == "/usr/local/bin/page-oncall"
    assert not any(a.startswith("-") for a in sent[1:])


# --------------------------------------------------------------------------- preconditions
class Answering:
    """A read-only runner that answers every step with one exit code and records it."""

    executes = True

    def __init__(self, code: int, stdout: str = "") -> None:
        self.code, self.stdout, self.steps = code, stdout, list[Step]()

    def run(self, step: Step) -> StepResult:
        self.steps.append(step)
        return StepResult(step.argv, self.code, 0.0, stdout=self.stdout)


def test_failover_haproxy_precondition_asks_for_a_healthy_peer() -> None:
    fo = load("failover-service")
    ok = Answering(0)
    assert fo.preconditions("imap", {"server": "imap/m1"}, ctx(runner=ok)) == []
    assert ok.steps[0].argv == (PY, "-m", "agent.execute.haproxy_cmd", "healthy-peer",
                                "/run/haproxy/admin.sock", "imap/m1")
    down = Answering(1, "0 healthy peer(s) of imap/m1: none\n")
    assert fo.preconditions("imap", {"server": "imap/m1"}, ctx(runner=down)) == [
        "failover target not healthy (another server of imap is UP): "
        "0 healthy peer(s) of imap/m1: none"]
    assert fo.preconditions("imap", {"server": "imap/m1"}, ctx()) == [
        "cannot check the failover target: no read-only runner"]


def test_failover_keepalived_needs_a_peer_check() -> None:
    fo = load("failover-service")
    reasons = fo.preconditions("imap", {"via": "keepalived"}, ctx(runner=Answering(0)))
    assert len(reasons) == 1 and "peer_check" in reasons[0]
    settings = {"via": "keepalived", "peer_check": ["/usr/local/bin/peer-ok", "{hostname}"]}
    ok = Answering(0)
    assert fo.preconditions("imap", {}, ctx(settings, runner=ok)) == []
    assert ok.steps[0].argv == ("/usr/local/bin/peer-ok", "mail1")
    assert fo.preconditions("imap", {}, ctx(settings, runner=Answering(2))) == [
        "failover target not healthy (peer check): exit 2"]


def test_stop_process_preconditions_read_the_real_processes(tmp_path: Path) -> None:
    """psutil reads them: a live process by PID and by name, a zombie, a kernel thread."""
    exe = tmp_path / "nwprovision"
    shutil.copy("/bin/sleep", exe)
    live = subprocess.Popen([exe, "600"])
    dead = subprocess.Popen([exe, "0"])
    try:
        os.waitid(os.P_PID, dead.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        kthread = next(p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == 2)
        pre = StopProcess().preconditions
        assert pre(str(live.pid), {}, ctx()) == []
        assert pre("nwprovision", {}, ctx()) == []
        assert pre(str(dead.pid), {}, ctx()) == [f"no running process '{dead.pid}'"]
        assert pre(str(kthread.pid), {}, ctx()) == [
            f"pid {kthread.pid} ({kthread.name()}) is a kernel thread"]
        assert pre("nwnothing", {}, ctx()) == ["no running process 'nwnothing'"]
    finally:
        live.kill()
        live.wait()
        dead.wait()


def test_a_process_is_found_by_its_kernel_comm_when_its_name_was_cut(tmp_path: Path) -> None:
    """A 15-character comm (TASK_COMM_LEN cut a longer name) is the name asked for;
    psutil's name() would answer the command line's longer one and miss it."""
    exe = tmp_path / "nwprovisioning-script"
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([exe, "600"])
    try:
        found = stop_process.find_by_name("nwprovisioning-")
        assert [i.pid for i in found] == [proc.pid]
        assert psutil.Process(proc.pid).name() != "nwprovisioning-"  # why comm is read
        assert StopProcess().preconditions("nwprovisioning-", {}, ctx()) == []
    finally:
        proc.kill()
        proc.wait()


def test_a_process_of_a_protected_unit_is_refused() -> None:
    info = stop_process.ProcInfo(300, 1, "sshd", "sleeping", "ssh.service")
    assert stop_process.refusal(info, (), ("ssh.service",)) == (
        "pid 300 (sshd) belongs to protected unit ssh.service")
    assert stop_process.refusal(info, (), ()) is None


@pytest.mark.parametrize(("text", "unit"), [
    ("0::/system.slice/dovecot.service\n", "dovecot.service"),
    ("1:name=systemd:/system.slice/postfix@-.service\n0::/\n", "postfix@-.service"),
    ("0::/system.slice/nwtest.service/payload\n", "nwtest.service"),
    ("0::/user.slice/user-0.slice/session-3.scope\n", "session-3.scope"),
    ("4:memory:/x.service\n0::/\n", None),
    ("", None),
])
def test_unit_of_cgroup(text: str, unit: str | None) -> None:
    assert stop_process.unit_of(text) == unit


# --------------------------------------------------------------------------- helpers
SERVERS_STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    "srv_agent_port\n"
    "3 nwtest 1 s1 127.0.0.1 2 8 1 1 1 6 3 2 6 0 0 0 - 36665 - 0 0 - - 0\n"
    "3 nwtest 2 s2 127.0.0.1 0 0 1 1 0 8 2 0 6 0 0 0 - 52693 - 0 0 - - 0\n\n"
)  # captured from haproxy 2.6: s1 drained, s2 failing its checks


def test_haproxy_servers_state_parse() -> None:
    s1, s2 = haproxy_cmd.parse_servers_state(SERVERS_STATE)
    assert (s1.server, s1.draining, s1.in_maint, s1.healthy) == ("s1", True, False, False)
    assert (s2.server, s2.op_state, s2.healthy) == ("s2", 0, False)
    assert haproxy_cmd.healthy_peers([s1, s2], "s1") == []
    assert haproxy_cmd.parse_servers_state("garbage\n# x\n1 2\n") == []


@pytest.mark.parametrize(("text", "usec"), [
    ("200ms", 200_000), ("1s", 1_000_000), ("1.500000s", 1_500_000),
    ("1min 30s", 90_000_000), ("infinity", None), ("", None),
])
def test_unit_props_timespan(text: str, usec: int | None) -> None:
    assert unit_props.timespan_usec(text) == usec


def test_unit_props_compare() -> None:
    want = unit_props.expected(["CPUQuota=20%", "IOWeight=10"])
    assert want == {"CPUQuotaPerSecUSec": "200000", "IOWeight": "10"}
    assert unit_props.mismatches(want, {"CPUQuotaPerSecUSec": "200ms", "IOWeight": "10"}) == []
    assert unit_props.mismatches(want, {"CPUQuotaPerSecUSec": "500ms"}) == [
        "CPUQuotaPerSecUSec=500ms (want 200000)", "IOWeight=(absent) (want 10)"]


def test_intents_are_written_read_and_reconciled(tmp_path: Path) -> None:
    first = intent.write_intent(tmp_path, "node-restart", "nas-a1", "hung nfsd", now=100.0,
                                boot_id="boot-1", intent_id="a")
    intent.write_intent(tmp_path, "node-restart", "nas-a1", "again", now=200.0,
                        boot_id="boot-2", intent_id="b")
    (tmp_path / "intents" / "broken.json").write_text("{not json")
    assert [i.id for i in intent.read_intents(tmp_path)] == ["a", "b"]
    assert first.pending
    done = intent.reconcile(tmp_path, "boot-2", now=300.0)
    assert [(i.id, i.outcome, i.ok) for i in done] == [
        ("a", "rebooted", True),
        ("b", "not-rebooted: the agent started in the same boot", False)]
    assert intent.reconcile(tmp_path, "boot-3", now=400.0) == []  # nothing pending any more
    stored = json.loads((tmp_path / "intents" / "a.json").read_text())
    assert stored["completed_at"] == 300.0 and stored["reason"] == "hung nfsd"
    with pytest.raises(KeyError):
        intent.complete_intent(tmp_path, "zzz", "x", True, now=1.0)


def test_intent_cli_writes_a_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert intent.main(["write", f"--state-dir={tmp_path}", "--action=node-restart",
                        "--subject=h", "--reason=-starts with a dash"]) == 0
    iid = capsys.readouterr().out.strip()
    [rec] = intent.read_intents(tmp_path)
    assert (rec.id, rec.reason) == (iid, "-starts with a dash")
    assert rec.boot_id == read_boot_id()
