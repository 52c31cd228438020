"""Network namespaces the test creates (never the root namespace), joined by a veth pair.

    with netns_pair("nwt") as pair:     # pair.server (10.231.X.1), pair.client (.2 and .3)
        NetnsRunner(pair.server).run(step)

Both namespaces are deleted on exit, whatever happened.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from agent.execute import SubprocessRunner
from agent.model import Step, StepResult


def ip(*argv: str) -> str:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, f"ip {' '.join(argv)}: {proc.stderr}"
    return proc.stdout


def in_ns(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


class NetnsRunner:
    """Runs each step's argv inside namespace `ns`; the result keeps the plan's argv."""

    executes = True

    def __init__(self, ns: str, inner: SubprocessRunner | None = None) -> None:
        self.ns = ns
        self._inner = inner or SubprocessRunner()

    def run(self, step: Step) -> StepResult:
        result = self._inner.run(replace(step, argv=("ip", "netns", "exec", self.ns,
                                                     *step.argv)))
        return replace(result, argv=step.argv)


@dataclass(frozen=True)
class NetnsPair:
    server: str
    client: str
    server_addr: str
    client_addrs: tuple[str, str]


#: every namespace pair the tests make lives in this /16 (never on the host's network);
#: kernel lines our tests provoke on purpose there (a SYN flood) name these addresses
TEST_NET_PREFIX = "10.231."


@contextmanager
def netns_pair(prefix: str = "nwt") -> Iterator[NetnsPair]:
    tag = f"{prefix}{os.getpid() % 100000}"
    server, client = f"{tag}s", f"{tag}c"
    net = f"{TEST_NET_PREFIX}{os.getpid() % 250}"
    made: list[str] = []
    try:
        for ns in (server, client):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", server, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
           "netns", client)
        ip("-n", server, "addr", "add", f"{net}.1/24", "dev", "veth0")
        ip("-n", client, "addr", "add", f"{net}.2/24", "dev", "veth1")
        ip("-n", client, "addr", "add", f"{net}.3/24", "dev", "veth1")
        ip("-n", server, "link", "set", "veth0", "up")
        ip("-n", client, "link", "set", "veth1", "up")
        yield NetnsPair(server, client, f"{net}.1", (f"{net}.2", f"{net}.3"))
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
