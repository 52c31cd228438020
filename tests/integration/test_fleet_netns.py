"""The fleet end to end (issue 9, item 5 and "a fleet test puts several agents in network
namespaces the test creates"): a coordinator namespace runs a real OpenSSH sshd whose
forced command is the real `nodewarden-coordinator session`; four mail hosts and their
NFS filer, each in a namespace of its own joined to the coordinator's by a veth pair, run
real `nodewarden run` agents that report to it over SSH.

The event: the filer stops answering, and each mail host's kernel prints
`nfs: server FILER not responding, still trying`. Each host has a kernel log of its own
(tests/integration/_kmsgdev.py, the agent's `[kmsg] path`): this machine's kernel has no
NFS client to print the real line, and a line written to /dev/kmsg from userspace comes
with facility 1, untrusted by design, so it could never make an incident. Then:

* every host's hello and heartbeats arrive; each mail host reports the finding, and
  its ladder pages (pages are enforced, as in a fleet);
* the coordinator makes ONE incident against the filer with all four hosts
  (`incidents --json`), raises ONE alert (`alerts`: the pages are the incident's), and
  `watch` delivers it once to the webhook a person's pager listens on;
* a mail host's disruptive lease is refused "dependency incident" through the agent's
  own lease gate; the filer, the dependency with an agent of its own, gets its lease
  (its ladder may act);
* the kernels print `nfs: server FILER OK`: the findings resolve, the incident and its
  alert end, and nobody is paged again;
* nothing is lost or duplicated: each agent's messages in the store are unique by id, in
  the order the agent spooled them, and match its audit log one for one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agent.daemon.reporting import SPOOL_DIR
from agent.report.spool import TOKEN_FILE
from tests.integration._agent import Agent, token
from tests.integration._coordinator import Coordinator
from tests.integration._fleet import (
    SSH_PORT,
    FleetNet,
    KernelLogs,
    Webhook,
    ask_lease,
    cli_json,
    coordinator_cli,
    fleet_coordinator,
    fleet_namespaces,
    kernel_logs,
    start_agent,
    webhook_receiver,
)
from tests.integration._sshd import running_sshd
from tests.integration._wait import poll

pytestmark = pytest.mark.realparts

CLIENTS = ["mx1", "mx2", "mx3", "mx4"]
DEADLINE_S = 30.0
#: the audit record's own bookkeeping, never sent (agent/daemon/reporting.py)
LOCAL = ("kind", "host", "mono")


@contextlib.contextmanager
def fleet(tmp_path: Path, filer: str
          ) -> Iterator[tuple[FleetNet, Coordinator, Webhook, KernelLogs, dict[str, Agent]]]:
    hosts = [*CLIENTS, filer]
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(fleet_namespaces(hosts))
        hook = stack.enter_context(webhook_receiver(net.coordinator, tmp_path / "pager"))
        coordinator = fleet_coordinator(
            tmp_path / "coordinator",
            {**dict.fromkeys(CLIENTS, ("mail", "mail")), filer: ("storage", "storage")},
            hook.url)
        sshd = stack.enter_context(running_sshd(
            coordinator.authorized_keys, netns=net.coordinator, address=net.address,
            port=SSH_PORT))
        logs = stack.enter_context(kernel_logs(tmp_path / "kmsg", hosts))
        agents: dict[str, Agent] = {}
        for host in hosts:
            agents[host] = start_agent(tmp_path / "hosts", host,
                                       "storage" if host == filer else "mail", net, sshd,
                                       coordinator, logs)
            stack.callback(agents[host].close)
        for agent in agents.values():
            agent.wait_ready()
        yield net, coordinator, hook, logs, agents
        for host, agent in agents.items():
            assert agent.stop() == 0, f"{host}:\n{agent.log()}"


def test_a_dependency_failing_under_a_fleet_is_one_incident(tmp_path: Path) -> None:
    filer = f"filer-{token()}"
    with fleet(tmp_path, filer) as (net, coordinator, hook, logs, agents):
        _every_host_reports(coordinator, agents)
        for host in CLIENTS:
            logs.emit(host, f"nfs: server {filer} not responding, still trying")
        _one_incident(net, coordinator, agents, filer)
        _one_alert_delivered_once(net, coordinator, hook, agents, filer)
        _clients_hold_and_the_filer_acts(net, agents, filer)
        for host in CLIENTS:
            logs.emit(host, f"nfs: server {filer} OK")
        _the_incident_passes(net, coordinator, hook, agents, filer)
        for host, agent in agents.items():
            _nothing_lost_nothing_doubled(coordinator, host, agent)


def _every_host_reports(coordinator: Coordinator, agents: dict[str, Agent]) -> None:
    def arrived(host: str) -> bool | None:
        kinds = {m[2] for m in coordinator.messages(host)}
        return {"hello", "heartbeat"} <= kinds or None

    for host, agent in agents.items():
        assert poll(partial(arrived, host), DEADLINE_S), \
            f"{host}: no hello and heartbeat in the store\n{agent.log()}"


def _finding(agent: Agent, filer: str, kind: str = "finding") -> dict[str, Any]:
    return agent.wait_audit(lambda r: r.get("kind") == kind
                            and r.get("problem") == "nfs-not-responding"
                            and r.get("subject") == filer, DEADLINE_S)


def _one_incident(net: FleetNet, coordinator: Coordinator, agents: dict[str, Agent],
                  filer: str) -> None:
    for host in CLIENTS:  # each host's own kernel line, a trusted finding of its own
        found = _finding(agents[host], filer)
        assert found["trusted"] is True and found["severity"] == "error", found
    assert not any(r.get("kind") == "finding" and r.get("subject") == filer
                   for r in agents[filer].audit())  # the filer's kernel said nothing

    def incident() -> list[dict[str, object]] | None:
        rows = cli_json(net, coordinator.config, "incidents")
        return rows if rows and rows[0]["hosts"] == CLIENTS else None

    rows = poll(incident, DEADLINE_S)
    assert rows == [{"problem": "nfs-not-responding", "subject": filer, "hosts": CLIENTS}], \
        cli_json(net, coordinator.config, "incidents")


def _page_stored(coordinator: Coordinator, host: str, filer: str) -> bool | None:
    return any(m[2] == "plan" and json.loads(m[4]).get("action") == "page"
               and json.loads(m[4]).get("finding_subject") == filer
               for m in coordinator.messages(host)) or None


def _one_alert_delivered_once(net: FleetNet, coordinator: Coordinator, hook: Webhook,
                              agents: dict[str, Agent], filer: str) -> None:
    for host in CLIENTS:  # every mail host's ladder pages (page is enforced)...
        page = agents[host].wait_audit(lambda r: r.get("kind") == "plan"
                                       and r.get("action") == "page"
                                       and r.get("finding_subject") == filer, DEADLINE_S)
        assert page["execute"] is True, page
        assert poll(partial(_page_stored, coordinator, host, filer), DEADLINE_S), host
    # ... and a person gets one alert: the incident's. A page that came before the
    # incident began (the first host's, when it alone saw the filer down) is ended, its
    # own alert folded into the incident's.
    alerts = cli_json(net, coordinator.config, "alerts")
    folded = [a for a in alerts if a["ended"] is not None]
    assert [(a["kind"], a["scope"]) for a in alerts if a["ended"] is None] == [
        ("incident", f"nfs-not-responding:{filer}")], alerts
    assert len(folded) <= 1 and all(
        a["kind"] == "page" and a["scope"] in
        {f"{h}/nfs-not-responding/{filer}" for h in CLIENTS} for a in folded), alerts
    alerts = [a for a in alerts if a["ended"] is None]
    # raised when the incident began: it names the hosts that made it one (which two
    # came first is the race's); `incidents` has them all
    text = str(alerts[0]["text"])
    assert text.startswith(f"incident: nfs-not-responding {filer} on 2 hosts ("), text
    for _ in range(2):  # the dead man's switch, run twice by its timer: told once
        done = coordinator_cli(net, coordinator.config, "watch", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout) == {"silent": [], "undelivered": []}
    paged = hook.alerts()
    assert [(p["kind"], p["scope"], p["alert"], p["contact"]) for p in paged] == [
        ("incident", f"nfs-not-responding:{filer}", alerts[0]["alert"], "pager")], paged
    assert paged[0]["text"] == text


def _clients_hold_and_the_filer_acts(net: FleetNet, agents: dict[str, Agent],
                                     filer: str) -> None:
    held = ask_lease(net, "mx2", agents["mx2"], "node-restart", "mx2", "nfs-not-responding")
    assert held["allow"] is False, held
    assert f"dependency incident: nfs-not-responding {filer} on 4 hosts" in \
        str(held["reason"]), held
    acts = ask_lease(net, filer, agents[filer], "node-restart", filer, "storage-hang")
    assert acts["allow"] is True, acts


def _the_incident_passes(net: FleetNet, coordinator: Coordinator, hook: Webhook,
                         agents: dict[str, Agent], filer: str) -> None:
    for host in CLIENTS:
        _finding(agents[host], filer, "resolved")
    assert poll(lambda: cli_json(net, coordinator.config, "incidents") == [] or None,
                DEADLINE_S), cli_json(net, coordinator.config, "incidents")
    alerts = cli_json(net, coordinator.config, "alerts")
    assert [a["kind"] for a in alerts].count("incident") == 1, alerts
    assert [a for a in alerts if a["ended"] is None] == [], alerts  # the incident's ended
    done = coordinator_cli(net, coordinator.config, "watch", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(hook.alerts()) == 1  # an ended incident pages nobody again
    leases = cli_json(net, coordinator.config, "leases")
    assert [(x["host"], x["action"], x["active"]) for x in leases] == [
        (filer, "node-restart", False)], leases  # granted to the filer, and given back


def _nothing_lost_nothing_doubled(coordinator: Coordinator, host: str, agent: Agent) -> None:
    """Every event the agent wrote to its audit log is in the store once, in order, as it
    was written; the ids its spool gave are unique and their sequence has no gap."""
    spool = (agent.state_dir / SPOOL_DIR / TOKEN_FILE).read_text().strip()
    audit = [{k: v for k, v in r.items() if k not in LOCAL} | {"type": r["kind"]}
             for r in agent.audit()]

    def stored() -> list[tuple[str, str, dict[str, Any]]] | None:
        mine = [(m[1], m[2], json.loads(m[4])) for m in coordinator.messages(host)
                if m[1].startswith(f"{spool}-")]
        events = [m for m in mine if m[1] not in ("hello", "heartbeat")]
        return mine if len(events) >= len(audit) else None

    mine = poll(stored, DEADLINE_S)
    assert mine is not None, f"{host}: the store is missing audit events\n{agent.log()}"
    every = [m[1] for m in coordinator.messages(host)]
    assert len(every) == len(set(every)), f"{host}: an id stored twice"
    seqs = [int(i.rsplit("-", 1)[1]) for i, kind, _ in mine if kind != "hello"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{host}: {seqs}"
    events = [body | {"type": kind} for _, kind, body in mine
              if kind not in ("hello", "heartbeat")]
    assert events[:len(audit)] == audit, host
