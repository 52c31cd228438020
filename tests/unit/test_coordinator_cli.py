"""`nodewarden-coordinator`'s commands: configuration refused with file, key and reason;
keys added, rotated and refused; status, leases and maintenance; a session for a host
the store does not know."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main
from coordinator.keys import public_key

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnJ0NVOtg7LtoxkkNlyjfZrnRnEDIM9cjVmFSIJFRbE "
       "comment with $(rm -rf /) in it")
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH2qOcJrJXMtxB6rUk3F9fsgq6prdTgFPg6MSUzzyf+n"
THIRD = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIP5eY417XHGxIfbxwMySDTuSiOXc+P5siXJ8iUpi0QE"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "fleet.db"}"\n'
                    f'[ssh]\nauthorized_keys = "{tmp_path / "authorized_keys"}"\n'
                    '[serve]\nsocket = ""\n')
    return path


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[store]\nurl = 'mysql://x'\n", "store.url", "must start with"),
    ("[store]\nurl = 3\n", "store.url", "must be"),
    ("[groups.mail]\nmax_disruptive = -1\n", "groups.mail.max_disruptive", ""),
    ("[groups.mail]\nstorm_percent = nan\n", "groups.mail.storm_percent", "finite"),
    ("[groups.mail]\nmax_disruptiv = 2\n", "groups.mail.max_disruptiv", "unknown key"),
    ("[groups.'bad name']\nmax_disruptive = 1\n", "groups.bad name", "group name"),
    ("[ssh]\nauthorized_keys = 'relative'\n", "ssh.authorized_keys", "absolute"),
    ("[ssh]\ncommand = 'x; rm -rf /'\n", "ssh.command", "plain program"),
    ("[leases]\nmax_ttl_s = inf\n", "leases.max_ttl_s", "finite"),
    ("[watch]\nsilent_after_s = nan\n", "watch.silent_after_s", "finite"),
    ("[leases]\nmax_ttl_s = 1" + "0" * 400 + "\n", "leases.max_ttl_s", "finite"),
    ('[store]\nurl = "sqlite:////tmp/x\\u0000y"\n', "store.url", "without NUL"),
    ("not toml ===", "-", "not valid TOML"),
])
def test_a_bad_configuration_is_refused_with_file_key_and_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str,
        reason: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert main(["--config", str(path), "status"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{path}: {key}: " in err and reason in err


def test_keys_add_writes_a_forced_command_line_and_rotates(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "keys", "add", "mx1", KEY, "--group", "mail"]) == 0
    assert main(["--config", str(config), "keys", "add", "mx2", OTHER, "--group", "mail"]) == 0
    lines = (tmp_path / "authorized_keys").read_text().splitlines()
    assert lines[0] == (f'restrict,command="nodewarden-coordinator --config {config} session '
                        f'--host mx1" {public_key(KEY)}')
    assert "rm -rf" not in lines[0]  # the key's comment is dropped
    # one key, one host: mx2's key cannot become mx1's too
    assert main(["--config", str(config), "keys", "add", "mx1", OTHER, "--group", "mail"]) == 1
    assert "already mx2's" in capsys.readouterr().err
    # adding mx1 again with a new key replaces its old one, mx2's stays
    assert main(["--config", str(config), "keys", "add", "mx1", THIRD, "--group", "web",
                 "--role", "webmail"]) == 0
    lines = (tmp_path / "authorized_keys").read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(OTHER) and lines[1].endswith(THIRD)
    assert (tmp_path / "authorized_keys").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    assert main(["--config", str(config), "status", "--json"]) == 0
    hosts = json.loads(capsys.readouterr().out)["status"]
    assert [(h["host"], h["group"], h["role"]) for h in hosts] == [
        ("mx1", "web", "webmail"), ("mx2", "mail", "generic")]


@pytest.mark.parametrize(("args", "code", "says"), [
    (["mx1", "ssh-ed25519 AAAA", "--group", "mail"], EXIT_REFUSED, "not an SSH public key"),
    (["mx1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "--group", "mail"], EXIT_REFUSED,
     "not an SSH public key"),
    (["mx1", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "--group", "mail"], EXIT_REFUSED, "key type"),
    (["mx1", "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB", "--group", "mail"], EXIT_REFUSED,
     "does not hold its own type"),
    (["mx 1", KEY, "--group", "mail"], EXIT_USAGE, "host"),
    (["mx1", KEY, "--group", "mail\"; rm"], EXIT_USAGE, "group"),
    (["mx1", "/nonexistent.pub", "--group", "mail"], EXIT_REFUSED, "No such file"),
])
def test_keys_add_refuses_what_is_not_a_key_or_a_name(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        code: int, says: str) -> None:
    assert main(["--config", str(config), "keys", "add", *args]) == code
    assert says in capsys.readouterr().err
    assert not (tmp_path / "authorized_keys").exists()


def test_a_config_path_that_would_break_the_forced_command_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    odd = tmp_path / "cfg;$SSH_ORIGINAL_COMMAND;x"
    odd.mkdir()
    path = odd / "c.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "fleet.db"}"\n'
                    f'[ssh]\nauthorized_keys = "{tmp_path / "authorized_keys"}"\n')
    assert main(["--config", str(path), "keys", "add", "mx1", KEY, "--group", "mail"]) == 1
    assert "cannot go into a forced command" in capsys.readouterr().err
    assert not (tmp_path / "authorized_keys").exists()


def test_concurrent_keys_add_all_land(config: Path, tmp_path: Path) -> None:
    keys = []
    for i in range(8):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / f"k{i}")], check=True)
        keys.append(str(tmp_path / f"k{i}.pub"))
    procs = [subprocess.Popen([sys.executable, "-m", "coordinator", "--config", str(config),
                               "keys", "add", f"h{i}", keys[i], "--group", "mail"],
                              stdout=subprocess.DEVNULL) for i in range(8)]
    assert [p.wait(60) for p in procs] == [0] * 8
    assert len((tmp_path / "authorized_keys").read_text().splitlines()) == 8


def test_maintenance_and_leases_commands(config: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "maintenance", "on", "mail"]) == EXIT_OK
    assert main(["--config", str(config), "maintenance", "on", "bad name"]) == EXIT_USAGE
    capsys.readouterr()
    assert main(["--config", str(config), "leases", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"leases": []}
    assert main(["--config", str(config), "leases"]) == EXIT_OK
    assert "no leases" in capsys.readouterr().out


def test_a_session_for_an_unknown_host_says_so_and_exits_1(config: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "coordinator", "--config", str(config),
                           "session", "--host", "ghost"], input=b'{"type":"hello"}\n',
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == EXIT_REFUSED
    reply = json.loads(done.stdout)
    assert reply["type"] == "error" and "not known here" in reply["reason"]


def test_a_store_that_cannot_be_opened_exits_3(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = tmp_path / "c.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{blocker}/fleet.db"\n')
    assert main(["--config", str(path), "status"]) == 3
    assert "store unavailable" in capsys.readouterr().err


def test_alerts_are_listed_and_acknowledged(config: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.store import SqliteStore

    store = SqliteStore(config.parent / "fleet.db")
    alert = store.run(lambda tx: tx.raise_alert("storm", "mail", "storm in group mail", 1.0))
    capsys.readouterr()
    assert main(["--config", str(config), "alerts", "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)["alerts"]
    assert [(a["alert"], a["kind"], a["acked"]) for a in listed] == [(alert, "storm", None)]
    assert main(["--config", str(config), "ack", str(alert)]) == EXIT_OK
    assert main(["--config", str(config), "ack", str(alert)]) == EXIT_REFUSED
    capsys.readouterr()
    main(["--config", str(config), "alerts", "--json"])
    assert json.loads(capsys.readouterr().out)["alerts"][0]["acked"] is not None


def test_watch_alerts_once_for_a_silent_host_and_ends_it_when_heard(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from coordinator.store import HostRecord, SqliteStore

    store = SqliteStore(config.parent / "fleet.db")
    now = time.time()
    store.run(lambda tx: tx.put_host(HostRecord("mx1", "mail", "mail", "k1", now - 500, None)))
    store.run(lambda tx: tx.put_host(HostRecord("mx2", "mail", "mail", "k2", now - 500, None)))
    store.run(lambda tx: tx.seen("mx2", now - 10))
    capsys.readouterr()
    assert main(["--config", str(config), "watch", "--json"]) == EXIT_REFUSED
    assert [h["host"] for h in json.loads(capsys.readouterr().out)["silent"]] == ["mx1"]
    assert main(["--config", str(config), "watch"]) == EXIT_REFUSED  # a second round
    alerts = store.run(lambda tx: tx.alerts())
    assert [(a[1], a[2]) for a in alerts] == [("silent", "mx1")]  # once
    assert "never heard from" in alerts[0][3]
    store.run(lambda tx: tx.seen("mx1", time.time()))
    capsys.readouterr()
    assert main(["--config", str(config), "watch"]) == EXIT_OK
    assert store.run(lambda tx: tx.alerts())[0][6] is not None  # ended


def test_events_lists_what_agents_sent(config: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.store import SqliteStore

    store = SqliteStore(config.parent / "fleet.db")
    store.run(lambda tx: tx.record("mx1", "a-1", "finding", {"problem": "x\u001b[31m"},
                                   digest="d", reply={"type": "ack"}, now=100.0))
    store.run(lambda tx: tx.record("mx2", "b-1", "heartbeat", {}, digest="d",
                                   reply={"type": "ack"}, now=200.0))
    capsys.readouterr()
    assert main(["--config", str(config), "events", "--json", "--host", "mx1"]) == EXIT_OK
    events = json.loads(capsys.readouterr().out)["events"]
    assert [(e["host"], e["type"], e["body"]) for e in events] == [
        ("mx1", "finding", {"problem": "x\u001b[31m"})]
    assert main(["--config", str(config), "events", "--since", "150"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "mx2 heartbeat b-1" in out and "mx1" not in out
    assert main(["--config", str(config), "events", "--host", "mx1"]) == EXIT_OK
    assert "\u001b" not in capsys.readouterr().out  # an agent's text is quoted, not shown raw


def test_incidents_lists_shared_dependencies(config: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.store import HostRecord, SqliteStore, Tx

    store = SqliteStore(config.parent / "fleet.db")

    def fleet(tx: Tx) -> None:
        for host in ("mx1", "mx2", "mx3"):
            tx.put_host(HostRecord(host, "mail", "mail", host, 0.0, None))
        for host in ("mx1", "mx2"):
            tx.fire(host, "ceph-error", "osd3", "error", 1.0)
        tx.fire("mx3", "ceph-error", "osd7", "error", 1.0)

    store.run(fleet)
    capsys.readouterr()
    assert main(["--config", str(config), "incidents", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["incidents"] == [
        {"problem": "ceph-error", "subject": "osd3", "hosts": ["mx1", "mx2"]}]


def test_keys_add_again_unchanged_says_so_and_a_change_is_written(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "keys", "add", "mx1", KEY, "--group", "mail"]) == 0
    before = (tmp_path / "authorized_keys").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--config", str(config), "keys", "add", "mx1", KEY, "--group", "mail"]) == 0
    assert capsys.readouterr().out.startswith("unchanged: mx1")
    assert (tmp_path / "authorized_keys").stat().st_mtime_ns == before
    assert main(["--config", str(config), "keys", "add", "mx1", KEY, "--group", "mta"]) == 0
    assert capsys.readouterr().out.startswith("added mx1 (group mta")


def test_keys_remove_takes_the_host_out_and_keeps_its_history(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.store import SqliteStore

    for host, key in (("mx1", KEY), ("mx2", OTHER)):
        assert main(["--config", str(config), "keys", "add", host, key, "--group",
                     "mail"]) == 0
    store = SqliteStore(tmp_path / "fleet.db")
    lease = store.run(lambda tx: tx.grant("mx1", "mail", "node-restart", "mx1", now=1.0,
                                          ttl_s=1e9))
    store.run(lambda tx: tx.fire("mx1", "nfs-not-responding", "filer", "critical", 1.0))
    capsys.readouterr()
    assert main(["--config", str(config), "keys", "remove", "mx1"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("removed mx1")
    lines = (tmp_path / "authorized_keys").read_text().splitlines()
    assert len(lines) == 1 and "--host mx2" in lines[0]
    assert [h.name for h in store.run(lambda tx: tx.hosts())] == ["mx2"]
    assert store.run(lambda tx: tx.lease(lease.id)).released is not None  # type: ignore[union-attr]
    assert store.run(lambda tx: tx.firing()) == []
    assert main(["--config", str(config), "keys", "remove", "mx1"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("unchanged: mx1 was not known")
    assert main(["--config", str(config), "keys", "remove", "bad name"]) == EXIT_USAGE
    store.close()
