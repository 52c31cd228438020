"""A coordinator for the fleet tests: its configuration, store and keys in a directory,
and one key per agent host added with `nodewarden-coordinator keys add` (the real
command), for a real sshd (tests/integration/_sshd.py) to serve."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from coordinator.stores import Store, open_store
from tests.integration._sshd import keypair

COORDINATOR = str(Path(sys.executable).parent / "nodewarden-coordinator")


@dataclass(frozen=True)
class Coordinator:
    config: Path
    store: Path
    authorized_keys: Path
    keys: dict[str, Path]
    #: the `[store] url` ("": the SQLite file `store`)
    store_url: str = ""

    def opened(self) -> Store:
        """Its store, opened (the caller closes it)."""
        return open_store(self.store_url or f"sqlite:///{self.store}")

    def messages(self, host: str | None = None) -> list[tuple[str, str, str, float, str]]:
        store = self.opened()
        try:
            return store.run(lambda tx: tx.messages(host))
        finally:
            store.close()


def make_coordinator(work: Path, hosts: list[str], group: str = "mail",
                     max_disruptive: int = 2, serve_socket: str = "",
                     store_url: str = "") -> Coordinator:
    """`serve_socket` "": each session runs in its own process; a path: sessions hand
    over to a `serve` the test starts there (tests/integration/_serve.py). `store_url`
    "": a SQLite store in `work`; else that store (several coordinators may share one
    PostgreSQL database)."""
    work.mkdir(parents=True, exist_ok=True)
    authorized = work / "ssh" / "authorized_keys"
    config = work / "coordinator.toml"
    url = store_url or f"sqlite:///{work / 'fleet.db'}"
    config.write_text(f'[store]\nurl = "{url}"\n'
                      f'[ssh]\nauthorized_keys = "{authorized}"\ncommand = "{COORDINATOR}"\n'
                      f'[serve]\nsocket = "{serve_socket}"\n'
                      f"[groups.{group}]\nmax_disruptive = {max_disruptive}\n")
    keys = {}
    for host in hosts:
        keys[host] = work / f"{host}_key"
        keypair(keys[host])
        done = subprocess.run([COORDINATOR, "--config", str(config), "keys", "add", host,
                               f"{keys[host]}.pub", "--group", group, "--role", "mail"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
    return Coordinator(config, work / "fleet.db", authorized, keys, store_url)


def coordinator_toml(host: str, port: int, key_file: Path | str, known_hosts: Path | str,
                     **more: float) -> str:
    """An agent's `[coordinator]` table for a test: as root, a heartbeat every second,
    and `more` keys (backoff_max_s=1, lease_timeout_s=20)."""
    lines = ["[coordinator]", f'host = "{host}"', f"port = {port}", 'user = "root"',
             f'key_file = "{key_file}"', f'known_hosts = "{known_hosts}"', "heartbeat_s = 1",
             *(f"{k} = {v:g}" for k, v in more.items())]
    return "\n" + "\n".join(lines) + "\n"
