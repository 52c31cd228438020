"""Remediations against real targets that cannot harm this machine (issue 4, "Done when").

systemd units live in a volatile nspawn container, nftables sets in network namespaces
the test creates, HAProxy runs on loopback with its own config, stop-process stops
processes this test started, exec and page call a recording stand-in script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from agent.clock import FakeClock, SystemClock
from agent.execute import Executor, RecordingRunner, SubprocessRunner
from agent.execute.intent import read_intents
from agent.model import Outcome, Plan
from agent.pipeline.intents import reconcile_intents
from remediations import ActionContext, InvalidParams, build_plan, load
from tests.integration._haproxy import BACKEND, haproxy_with_servers
from tests.integration._netns import NetnsPair, NetnsRunner, in_ns, netns_pair
from tests.integration._nspawn import Container, NsenterRunner, booted_container

pytestmark = pytest.mark.realparts

UNIT = "nwtest.service"
UNIT_TEXT = """[Unit]
Description=nodewarden throwaway test unit

[Service]
ExecStart=/bin/sleep infinity
ExecReload=/bin/true
"""
NORELOAD_UNIT = "nwtest-noreload.service"


def ctx(state_dir: Path = Path("/nonexistent"), settings: Mapping[str, object] | None = None,
        runner: SubprocessRunner | None = None, **kw: object) -> ActionContext:
    return ActionContext(hostname="nwtest-host", state_dir=state_dir, agent_pid=os.getpid(),
                         clock=SystemClock(), runner=runner, settings=settings or {},
                         **kw)  # type: ignore[arg-type]


def plan_of(action: str, subject: str, params: Mapping[str, str] | None = None,
            context: ActionContext | None = None) -> Plan:
    return build_plan(action, subject, params or {}, context or ctx())


# =========================================================================== nspawn
@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    with booted_container(f"nwtest{os.getpid() % 100000}") as c:
        print(f"\ncontainer {c.name} booted in {c.boot_seconds:.2f}s (leader pid {c.leader})")
        units = c.root / "run/systemd/system"
        units.mkdir(parents=True, exist_ok=True)
        (units / UNIT).write_text(UNIT_TEXT)
        (units / NORELOAD_UNIT).write_text(UNIT_TEXT.replace("ExecReload=/bin/true\n", ""))
        c.check("systemctl", "daemon-reload")
        c.check("systemctl", "start", UNIT, NORELOAD_UNIT)
        yield c


def main_pid(c: Container, unit: str) -> int:
    return int(c.check("systemctl", "show", "-p", "MainPID", "--value", unit))


def run_in(c: Container, plan: Plan) -> Outcome:
    return Executor(NsenterRunner(c), SystemClock()).run(plan)


def test_restart_service_restarts_the_unit_in_a_real_systemd(container: Container) -> None:
    before = main_pid(container, UNIT)
    outcome = run_in(container, plan_of("restart-service", UNIT))
    assert outcome.ok and outcome.executed, outcome.detail
    after = main_pid(container, UNIT)
    assert before > 0 and after > 0 and after != before
    assert outcome.detail == "1 step(s) ok; verified (1 check(s))"


def test_restart_service_of_a_missing_unit_fails_and_skips_verify(container: Container) -> None:
    outcome = run_in(container, plan_of("restart-service", "nwtest-absent"))
    assert not outcome.ok and outcome.executed
    assert len(outcome.results) == 1 and outcome.results[0].exit_code not in (0, None)
    assert "verification skipped" in outcome.detail


def test_reload_service_reloads_and_keeps_the_main_pid(container: Container) -> None:
    before = main_pid(container, UNIT)
    outcome = run_in(container, plan_of("reload-service", UNIT))
    assert outcome.ok, outcome.detail
    assert main_pid(container, UNIT) == before


def test_reload_of_a_unit_without_reload_fails_unless_fallback_restart(
        container: Container) -> None:
    before = main_pid(container, NORELOAD_UNIT)
    assert not run_in(container, plan_of("reload-service", NORELOAD_UNIT)).ok
    outcome = run_in(container, plan_of("reload-service", NORELOAD_UNIT,
                                        {"fallback": "restart"}))
    assert outcome.ok, outcome.detail
    assert main_pid(container, NORELOAD_UNIT) != before


def test_throttle_unit_sets_cpu_quota_and_io_weight(container: Container) -> None:
    outcome = run_in(container, plan_of("throttle-unit", UNIT,
                                        {"cpu_quota": "20%", "io_weight": "10"}))
    assert outcome.ok, outcome.detail + "".join(r.stderr for r in outcome.results)
    shown = container.check("systemctl", "show", "-p", "CPUQuotaPerSecUSec", "-p",
                            "IOWeight", UNIT)
    assert "CPUQuotaPerSecUSec=200ms" in shown and "IOWeight=10" in shown


def test_throttle_verify_fails_when_the_properties_differ(container: Container) -> None:
    container.check("systemctl", "set-property", "--runtime", UNIT, "CPUQuota=50%")
    verify = plan_of("throttle-unit", UNIT, {"cpu_quota": "20%"}).verify[0]
    result = NsenterRunner(container).run(verify)
    assert result.exit_code == 1 and "want 200000" in result.stderr


def test_page_without_a_command_writes_to_the_journal(container: Container) -> None:
    plan = plan_of("page", "nas-a1", {"problem": "raid-degraded", "message": "md0 lost sdb"})
    outcome = run_in(container, plan)
    assert outcome.ok, outcome.detail
    container.check("journalctl", "--sync")
    journal = container.check("journalctl", "-t", "nodewarden", "-o", "cat", "--no-pager")
    assert ("PAGE host=nwtest-host problem=raid-degraded subject=nas-a1: md0 lost sdb"
            in journal)


def test_node_restart_writes_the_intent_then_reboots_the_container(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with booted_container(f"nwtestr{os.getpid() % 100000}", binds=[state]) as c:
        plan = plan_of("node-restart", "nwtest-host", {"reason": "test reboot"}, ctx(state))
        assert [s.argv[-1] for s in plan.steps][-1] == "reboot"
        outcome = run_in(c, plan)
        intent_result, reboot_result = outcome.results  # the intent step came first, and ok
        assert intent_result.exit_code == 0, intent_result.stderr
        # the container (its systemd) went away: nspawn exits by itself
        exit_code = c.proc.wait(timeout=60)
        print(f"\nnspawn exited {exit_code} after reboot; reboot step {reboot_result}")
    [intent] = read_intents(state)
    assert (intent.action, intent.subject, intent.reason) == (
        "node-restart", "nwtest-host", "test reboot")
    assert intent.pending
    events = reconcile_intents(state, FakeClock(), boot_id="a-later-boot")
    assert [(e.kind, e.fields["ok"]) for e in events] == [("outcome", True)]
    [done] = read_intents(state)
    assert done.outcome == "rebooted" and not done.pending


# =========================================================================== nftables
def nft_set(ns: str, name: str) -> dict[str, object]:
    proc = in_ns(ns, "nft", "-j", "list", "set", "inet", "nodewarden", name)
    assert proc.returncode == 0, proc.stderr
    sets = [x["set"] for x in json.loads(proc.stdout)["nftables"] if "set" in x]
    return dict(sets[0])


def elements(ns: str, name: str) -> dict[str, int]:
    """address -> timeout seconds."""
    out = {}
    for item in nft_set(ns, name).get("elem", []):  # type: ignore[attr-defined]
        elem = item["elem"] if isinstance(item, dict) and "elem" in item else item
        out[str(elem["val"])] = int(elem["timeout"])
    return out


LISTEN = ("import socket, sys\n"
          "s = socket.create_server(('0.0.0.0', 7070))\n"
          "print('ready', flush=True)\n"
          "while True:\n"
          "    s.accept()[0].close()\n")
CONNECT = ("import socket, sys\n"
           "s = socket.socket()\n"
           "s.bind((sys.argv[1], 0))\n"
           "s.settimeout(1.0)\n"
           "s.connect((sys.argv[2], 7070))\n")


def listen_in(ns: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTEN],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def connects(ns: str, source: str, target: str) -> bool:
    """A TCP connect from `source` in `ns`: a dropped SYN times out after 1 s."""
    return in_ns(ns, sys.executable, "-c", CONNECT, source, target).returncode == 0


def test_block_addresses_drops_traffic_from_blocked_address_only() -> None:
    with netns_pair("nwb") as pair:
        listener = listen_in(pair.server)
        try:
            check_blocking(pair)
        finally:
            listener.kill()
            listener.wait()


def check_blocking(pair: NetnsPair) -> None:
    blocked, other = pair.client_addrs
    assert connects(pair.client, blocked, pair.server_addr)  # before: both reach it
    plan = plan_of("block-addresses", f"{blocked},2001:db8::5", {"timeout": "10m"})
    outcome = Executor(NetnsRunner(pair.server), SystemClock()).run(plan)
    assert outcome.ok, outcome.detail
    assert elements(pair.server, "blocked4") == {blocked: 600}
    assert elements(pair.server, "blocked6") == {"2001:db8::5": 600}
    assert nft_set(pair.server, "blocked4")["flags"] == ["timeout"]
    assert not connects(pair.client, blocked, pair.server_addr)
    assert connects(pair.client, other, pair.server_addr)
    # a second run is idempotent: still one drop rule per family
    assert Executor(NetnsRunner(pair.server), SystemClock()).run(plan).ok
    ruleset = in_ns(pair.server, "nft", "list", "chain", "inet", "nodewarden",
                    "input").stdout
    assert ruleset.count("drop") == 2


def test_block_addresses_never_blocks_allowlisted_and_enforces_the_cap() -> None:
    settings = {"allowlist": ["198.51.100.0/24"], "max_addresses": 3}
    with netns_pair("nwa") as pair:
        with pytest.raises(InvalidParams, match="allowlisted"):
            plan_of("block-addresses", "198.51.100.7,127.0.0.1", context=ctx(settings=settings))
        addrs = ["198.51.100.7", *(f"203.0.113.{i}" for i in range(1, 6))]
        plan = plan_of("block-addresses", ",".join(addrs), context=ctx(settings=settings))
        assert "not blocked (allowlisted): 198.51.100.7" in plan.summary
        assert "2 more left out" in plan.summary
        outcome = Executor(NetnsRunner(pair.server), SystemClock()).run(plan)
        assert outcome.ok, outcome.detail
        assert sorted(elements(pair.server, "blocked4")) == [
            "203.0.113.1", "203.0.113.2", "203.0.113.3"]


def test_block_addresses_kernel_set_size_caps_the_set() -> None:
    settings = {"set_size": 2}
    with netns_pair("nwz") as pair:
        plan = plan_of("block-addresses", "203.0.113.1,203.0.113.2,203.0.113.3",
                       context=ctx(settings=settings))
        outcome = Executor(NetnsRunner(pair.server), SystemClock()).run(plan)
        assert not outcome.ok and outcome.executed
        assert "step 2 of 2 failed" in outcome.detail
        assert len(elements(pair.server, "blocked4")) <= 2


# =========================================================================== haproxy
def test_failover_service_drains_the_server_in_a_real_haproxy(tmp_path: Path) -> None:
    with haproxy_with_servers(tmp_path) as hap:
        context = ctx(settings={"haproxy_socket": str(hap.socket)}, runner=SubprocessRunner())
        params = {"server": f"{BACKEND}/s1"}
        assert load("failover-service").preconditions("imap", params, context) == []
        outcome = Executor(SubprocessRunner(), SystemClock()).run(
            plan_of("failover-service", "imap", params, context))
        assert outcome.ok, outcome.detail
        assert hap.state("s1").draining and not hap.state("s2").draining
        # undo, as the runbook says
        undo = subprocess.run([sys.executable, "-m", "agent.execute.haproxy_cmd", "send",
                               str(hap.socket), f"set server {BACKEND}/s1 state ready"],
                              check=False)
        assert undo.returncode == 0 and not hap.state("s1").draining


def test_failover_precondition_fails_when_the_other_server_is_down(tmp_path: Path) -> None:
    with haproxy_with_servers(tmp_path) as hap:
        context = ctx(settings={"haproxy_socket": str(hap.socket)}, runner=SubprocessRunner())
        hap.listeners["s2"].close()
        hap.wait_for("s2 DOWN", lambda: not hap.state("s2").healthy)
        reasons = load("failover-service").preconditions(
            "imap", {"server": f"{BACKEND}/s1"}, context)
        assert len(reasons) == 1 and "not healthy" in reasons[0] and "none" in reasons[0]


def test_failover_send_reports_haproxy_errors(tmp_path: Path) -> None:
    with haproxy_with_servers(tmp_path) as hap:
        outcome = Executor(SubprocessRunner(), SystemClock()).run(plan_of(
            "failover-service", "imap", {"server": f"{BACKEND}/nosuch"},
            ctx(settings={"haproxy_socket": str(hap.socket)})))
        assert not outcome.ok and "step 1 of 1 failed" in outcome.detail


# =========================================================================== processes
STUBBORN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "open('/proc/self/comm', 'w').write(sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
POLITE = STUBBORN.replace("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n", "")


def start(code: str, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_stop_process_kills_a_process_that_ignores_term_after_the_grace(
        procs: list[subprocess.Popen[str]]) -> None:
    procs.append(p := start(STUBBORN, "nwstubborn"))
    context = ctx(runner=SubprocessRunner())
    assert load("stop-process").preconditions(str(p.pid), {}, context) == []
    outcome = Executor(SubprocessRunner(), SystemClock()).run(
        plan_of("stop-process", str(p.pid), {"grace": "1s"}, context))
    assert outcome.ok, outcome.detail
    assert p.wait(timeout=10) == -signal.SIGKILL
    assert "killed after 1s grace" in outcome.results[0].stdout


def test_stop_process_by_name_terms_a_polite_process(
        procs: list[subprocess.Popen[str]]) -> None:
    name = f"nwpolite{os.getpid() % 1000}"
    procs.append(p := start(POLITE, name))
    outcome = Executor(SubprocessRunner(), SystemClock()).run(
        plan_of("stop-process", name, {"grace": "5s"}))
    assert outcome.ok, outcome.detail
    assert p.wait(timeout=10) == -signal.SIGTERM
    assert "exited after SIGTERM" in outcome.results[0].stdout


def test_stop_process_refuses_pid_1_and_the_agent(procs: list[subprocess.Popen[str]]) -> None:
    stop = load("stop-process")
    assert stop.preconditions("1", {}, ctx()) == ["pid 1 is init"]
    assert stop.preconditions(str(os.getpid()), {}, ctx()) == [
        f"pid {os.getpid()} is the agent itself"]
    # the helper refuses again at the moment it acts, whatever the plan said
    procs.append(p := start(POLITE, "nwrefused"))
    helper = subprocess.run(
        [sys.executable, "-m", "agent.execute.stop_process", "stop", "--pid", str(p.pid),
         "--grace", "1", "--refuse-pid", str(p.pid)], capture_output=True, text=True,
        check=False)
    assert helper.returncode == 1 and "refused" in helper.stderr
    assert p.poll() is None


# =========================================================================== exec, page
RECORDER = """#!/usr/bin/python3
import json, sys
with open({out!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "argv.jsonl"
    script = tmp_path / "record"
    script.write_text(RECORDER.format(out=str(out)))
    script.chmod(0o755)
    return script, out


def test_exec_runs_the_site_command_with_whole_token_values(
        recorder: tuple[Path, Path]) -> None:
    script, out = recorder
    settings = {"commands": {"revert": [str(script), "--host", "{hostname}", "{subject}",
                                        "{arg}"]}}
    plan = plan_of("exec", "spam filter; rm -rf /", {"command": "revert", "arg": "$(id)"},
                   ctx(settings=settings))
    outcome = Executor(SubprocessRunner(), SystemClock()).run(plan)
    assert outcome.ok, outcome.detail
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        ["--host", "nwtest-host", "spam filter; rm -rf /", "$(id)"]]


def test_page_runs_the_paging_command_even_without_syslog(
        recorder: tuple[Path, Path]) -> None:
    script, out = recorder
    settings = {"command": [str(script), "{problem}", "{subject}", "{message}"]}
    plan = plan_of("page", "--nas-a1", {"problem": "mce", "message": "cpu 3\nbank 4"},
                   ctx(settings=settings))
    outcome = Executor(SubprocessRunner(), SystemClock()).run(plan)
    assert outcome.ok, outcome.detail
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        ["mce", "nas-a1", "cpu 3 bank 4"]]


def test_dry_run_and_execute_hand_the_runner_the_same_steps(
        recorder: tuple[Path, Path]) -> None:
    """docs/architecture.md safety property 4, on a real run: same plan, same steps, nothing run."""
    script, out = recorder
    settings = {"commands": {"rec": [str(script), "{subject}"]}}
    plan = plan_of("exec", "x", {"command": "rec"}, ctx(settings=settings))
    recording = RecordingRunner()
    dry = Executor(recording, SystemClock()).run(plan)
    assert not out.exists()
    assert dry.ok and not dry.executed
    real = Executor(SubprocessRunner(), SystemClock()).run(plan)
    assert real.executed and real.ok
    assert [s.argv for s in recording.steps] == [r.argv for r in real.results]



@pytest.mark.realparts
def test_the_stop_helper_never_finds_itself() -> None:
    """Review: asked about its own interpreter's name, the helper found itself (`stop`
    signalled itself mid-run, `gone` could never pass). This test's own process has the
    same name, so `gone` lists it, and never the helper."""
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    helper = subprocess.Popen(
        [sys.executable, "-m", "agent.execute.stop_process", "gone", "--name", comm],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    out, _ = helper.communicate(timeout=60)
    listed = out.split("still running:", 1)[1].replace(",", " ").split()
    assert str(os.getpid()) in listed
    assert str(helper.pid) not in listed
