"""`nodewarden check` refuses every typo that used to pass it (issue 7), with file, key and
reason, never a traceback: non-finite numbers, nesting bombs, paths and names that are
not what they claim, and every value a remediation would refuse only when it plans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.schema import ConfigError
from agent.simulate.replay import scenario_config
from agent.simulate.scenario import ScenarioError, parse_scenario

# ruff: noqa: E501  (the user signature below holds its regex on one line, as TOML does)

ROOT = Path(__file__).resolve().parents[2]


def errors_for(tmp_path: Path, body: str, *, agent: str = "") -> list[ConfigError]:
    sigs = tmp_path / "signatures.d"
    sigs.mkdir(exist_ok=True)
    path = tmp_path / "agent.toml"
    state = "" if "state_dir" in agent else f'state_dir = "{tmp_path}/state"\n'
    path.write_text(f'[agent]\nsignatures_dir = "{sigs}"\n{state}{agent}\n{body}')
    return load_config(str(path))[1]


# (what, the agent table's extra lines, the rest of the file, the key, words of the reason)
BAD: list[tuple[str, str, str, str, str]] = [
    ("nan interval stops sampling", "sample_interval_s = nan", "",
     "agent.sample_interval_s", "finite"),
    ("inf interval", "sample_interval_s = inf", "", "agent.sample_interval_s", "finite"),
    ("nan level disables load-high (and storage-hang)", "",
     '[rules.load-high]\nkind = "threshold"\nmetric = "load1_per_cpu"\nlevel = nan\n',
     "rules.load-high.level", "finite"),
    ("nan window crashes every decision", "",
     '[rules.flood]\nkind = "signature"\nproblems = ["auth-failure"]\nwindow_s = nan\n',
     "rules.flood.window_s", "finite"),
    ("-inf cooldown", "", "[guards.cooldown]\ndefault_s = -inf\n",
     "guards.cooldown.default_s", "finite"),
    ("nan verify time in a rung", "",
     '[policy.mce]\nrungs = [{ action = "page", verify_s = nan }]\n',
     "policy.mce.rungs[0].verify_s", "finite"),
    ("nan in an action setting", "", "[actions.block-addresses]\nmax_addresses = nan\n",
     "actions.block-addresses.max_addresses", "finite"),
    ("allowlist entry that is not an address", "",
     '[actions.block-addresses]\nallowlist = ["192.0.2.0/24", "mail.example.com"]\n',
     "actions.block-addresses.allowlist", "not an address or CIDR"),
    ("relative exec path", "",
     '[actions.exec.commands]\nrevert = ["spamfilter-revert", "{subject}"]\n',
     "actions.exec.commands", "absolute program path"),
    ("relative paging command", "", '[actions.page]\ncommand = ["page-oncall", "{message}"]\n',
     "actions.page.command", "absolute program path"),
    ("a placeholder inside a token", "",
     '[actions.page]\ncommand = ["/usr/local/bin/page", "--to={subject}"]\n',
     "actions.page.command", "mixes text and a placeholder"),
    ("empty state_dir", 'state_dir = ""', "", "agent.state_dir", "must not be empty"),
    ("relative state_dir", 'state_dir = "var/lib/nodewarden"', "", "agent.state_dir",
     "absolute path"),
    ("control characters in the hostname", 'hostname = "mx1\\u001b[31m"', "",
     "agent.hostname", "not a host name"),
    ("spaces in the hostname", 'hostname = "mx1 PAGE host=other"', "", "agent.hostname",
     "not a host name"),
    ("a rung that would restart reboot.target", "",
     '[policy.oom-kill]\nrungs = [{ action = "restart-service", subject = "reboot.target" }]\n',
     "policy.oom-kill.rungs[0].subject", "is not a .service"),
    ("a rung that would throttle sshd", "",
     '[policy.runaway-unit]\nrungs = [{ action = "throttle-unit", subject = "sshd.service" }]\n',
     "policy.runaway-unit.rungs[0].subject", "protected unit"),
    ("a rung timeout that is not a duration", "",
     '[policy.mce]\nrungs = [{ action = "restart-service", subject = "mcelog.service",'
     ' params = { timeout = "a while" } }]\n',
     "policy.mce.rungs[0].params.timeout", "not a duration"),
    ("a haproxy server that smuggles a command", "",
     '[actions.failover-service]\nhaproxy_server = "imap/mx1;shutdown sessions"\n',
     "actions.failover-service.haproxy_server", "BACKEND/SERVER"),
    ("a page budget (pages always go out)", "", "[guards.budget.page]\nmax = 5\n",
     "guards.budget.page", "never budgeted"),
    ("a cooldown of 1e20 s (it crashed the first denial)", "",
     "[guards.cooldown]\ndefault_s = 1e20\n", "guards.cooldown.default_s", "at most"),
    ("a budget window of 1e20 s", "",
     "[guards.budget.exec]\nmax = 1\nwindow_s = 1e20\n", "guards.budget.exec.window_s",
     "at most"),
]


@pytest.mark.parametrize(("what", "agent", "body", "key", "reason"), BAD,
                         ids=[b[0] for b in BAD])
def test_check_refuses(tmp_path: Path, what: str, agent: str, body: str, key: str,
                       reason: str) -> None:
    errors = errors_for(tmp_path, body, agent=agent)
    hits = [e for e in errors if e.key == key and reason in e.reason]
    assert hits, f"{what}: {[str(e) for e in errors]}"
    assert hits[0].file == str(tmp_path / "agent.toml")


@pytest.mark.parametrize("bomb", ["a = " + "[" * 5000 + "]" * 5000,
                                  "a = " + "{b = " * 3000 + "1" + "}" * 3000,
                                  "[a]\n" + "".join(f"[a{'.x' * i}]\n" for i in range(1, 30))])
def test_a_nesting_bomb_is_an_error_not_a_traceback(tmp_path: Path, bomb: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(bomb)
    r = subprocess.run([sys.executable, "-m", "agent", "check", "--json", "--config",
                        str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    [error] = [json.loads(line) for line in r.stdout.splitlines()]
    assert error["file"] == str(path) and "nested deeper than" in error["reason"]


def test_shipped_ladders_and_settings_pass_every_check(tmp_path: Path) -> None:
    for role in ("generic", "mail", "storage"):
        assert errors_for(tmp_path, "", agent=f'role = "{role}"') == []


CATASTROPHIC = """
[[signature]]
id = "local.backtracks"
problem = "auth-failure"
source = "log:mail"
program = 'dovecot/(?:a|a)*imap-login'
regex = '''(?:(?:x+x+)+y|Disconnected(?: \\S+)*(?: \\S+)* \\(auth failed)\\): user=<(?P<user>(?:\\w+\\w*)+)>'''
severity = "warning"
description = "a user signature whose regex would backtrack catastrophically in Python re"
reference = "local"
subject = "user"
examples = [
  { line = "dovecot: imap-login: Disconnected (auth failed): user=<alice>", subject = "alice" },
  { line = "dovecot: imap-login: xxy): user=<bob>", subject = "bob" },
]
counter_examples = [
  "dovecot: imap-login: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxz",
  "dovecot: imap-login: Disconnected a a a a a a a a a a a a a a a a a a a a a a a a a a a a z",
  "dovecot: imap-login: xy): user=<aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!>",
]
"""


@pytest.mark.parametrize("engine", ["hyperscan", "portable"])
def test_a_catastrophic_user_regex_cannot_hang_check_or_scan(
        tmp_path: Path, engine: str) -> None:
    """In Python `re` each counter-example would take longer than the age of the universe;
    the catalog runs regexes on RE2, so `check`, `scan` (and the daemon) stay linear. The
    subprocess timeout only turns a hang into a failure."""
    sigs = tmp_path / "signatures.d"
    sigs.mkdir()
    (sigs / "local.toml").write_text(CATASTROPHIC)
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nsignatures_dir = "{sigs}"\nstate_dir = "{tmp_path}/s"\n')
    env = {"NODEWARDEN_MATCHER": engine, "PATH": "/usr/bin:/bin",
           "NODEWARDEN_CACHE": os.environ.get("NODEWARDEN_CACHE", "off")}
    r = subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
                       env=env)
    assert r.returncode == 0 and r.stdout.strip() == "configuration ok", r.stdout + r.stderr
    crafted = "Oct 20 03:18:44 mx1 dovecot: imap-login: " + "x" * 5000 + "z\n"
    r = subprocess.run([sys.executable, "-m", "agent", "scan", "--signatures-dir", str(sigs),
                        "--engine", engine, "-"],
                       input=crafted * 50, capture_output=True, text=True, cwd=ROOT,
                       timeout=300, check=False, env=env)
    assert r.returncode == 0 and "50 lines read, 0 matched" in r.stderr, r.stderr


def test_a_scenario_with_nan_is_refused_with_its_line() -> None:
    with pytest.raises(ScenarioError, match=r"<s>:2: not valid JSON: NaN is not a number"):
        parse_scenario('{"host": {}}\n{"t": NaN, "metrics": {"load1": 1}}', "<s>")
    scenario = parse_scenario('{"host": {"config": {"agent": {"sample_interval_s": 1e999}}}}',
                              "<s>")
    with pytest.raises(Exception, match="finite"):
        scenario_config(scenario, str(ROOT / "tests/scenarios/isolated.toml"))


@pytest.mark.parametrize("make", ["fifo", "dev-zero", "huge"])
def test_a_signature_file_that_is_not_one_is_an_error_not_a_hang(
        tmp_path: Path, make: str) -> None:
    """A FIFO named *.toml used to block `check` for ever; /dev/zero filled memory."""
    sigs = tmp_path / "signatures.d"
    sigs.mkdir()
    bad = sigs / "site.toml"
    if make == "fifo":
        os.mkfifo(bad)
    elif make == "dev-zero":
        bad.symlink_to("/dev/zero")
    else:
        bad.write_bytes(b"# " + b"x" * (5 << 20) + b"\n")
    errors = errors_for(tmp_path, "")
    [e] = [e for e in errors if e.file == str(bad)]
    assert "cannot read" in e.reason
    assert ("not a regular file" in e.reason) == (make != "huge")
