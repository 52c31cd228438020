"""The one configuration path: defaults, errors with file/key/reason, docs in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import load_config, parse_config, read_config
from agent.schema import Section

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_no_file_gives_builtin_defaults_in_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODEWARDEN_CONFIG", raising=False)
    monkeypatch.setattr("agent.config.DEFAULT_CONFIG_PATH", Path("/nonexistent/agent.toml"))
    loaded, errors = load_config()
    assert errors == [] and loaded is not None
    config = loaded.config
    assert config.agent.mode == "dry-run"
    assert [(s.name, str(s.path)) for s in config.logs] == [("mail", "/var/log/mail.log")]
    assert config.sources == ("<built-in defaults>",)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    _, errors = read_config(tmp_path / "nope.toml")
    assert [(e.key, e.reason) for e in errors] == [("-", "file not found")]


def test_env_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[agent]\nmode = "enforce"\n')
    monkeypatch.setenv("NODEWARDEN_CONFIG", str(path))
    loaded, _errors = load_config()
    assert loaded is not None and loaded.config.agent.mode == "enforce"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[agent]\nmode = "yolo"\n', "agent.mode", "must be one of observe, dry-run, enforce"),
        ("[agent]\nmdoe = 1\n", "agent.mdoe", "unknown key"),
        ("[agent]\nsample_interval_s = 0\n", "agent.sample_interval_s", "must be at least"),
        ('[probes.x]\nkind = "imap"\nport = 99999\n', "probes.x.port", "must be at most 65535"),
        ('[probes.x]\nkind = "tcp"\n', "probes.x.port", "is required for a tcp probe"),
        ('[probes.x]\nkind = "imap"\nlogin_user = "c"\n', "probes.x.login_user", "go together"),
        ("[logs.mail]\nmax_line_bytes = 1000\n", "logs.mail.path", "is required"),
        ('[metrics]\nfilesystems = "/"\n', "metrics.filesystems", "must be a list of strings"),
        ("agent = 3\n", "agent", "must be a table"),
        ("[agent\n", "-", "not valid TOML"),
    ],
)
def test_errors_carry_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = write(tmp_path, text)
    loaded, errors = load_config(path)
    assert loaded is None
    matching = [e for e in errors if e.key == key]
    assert matching, errors
    assert reason in matching[0].reason
    assert matching[0].file == str(path)


def test_every_error_is_reported_in_one_pass(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nmode = "x"\nrole = "y"\n[kmsg]\nenabled = "yes"\n')
    _, errors = read_config(path)
    assert {e.key for e in errors} >= {"agent.mode", "agent.role", "kmsg.enabled"}


def test_non_utf8_file_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"[agent]\nmode = \"\xff\"\n")
    _, errors = read_config(path)
    assert "not UTF-8" in errors[0].reason


def test_probe_port_defaults_follow_kind_and_tls() -> None:
    config, errors = parse_config(
        {"probes": {"a": {"kind": "imap", "tls": "tls"}, "b": {"kind": "smtp",
                                                                "tls": "starttls"}}}, "f")
    assert not errors
    assert [p.port for p in config.probes] == [993, 587]


def _documented_keys() -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_.A-Z]+)` \|", DOCS.read_text(), flags=re.M))


def test_every_key_the_parsers_ask_for_is_documented() -> None:
    asked: set[str] = set()
    sample = {"logs": {"NAME": {"path": "/x"}}, "probes": {"NAME": {"kind": "imap"}},
              "coordinator": {"host": "c"}}
    parse_config(sample, "f", asked)
    leaves = {k for k in asked if not any(o.startswith(k + ".") for o in asked)}
    missing = leaves - _documented_keys()
    assert not missing, f"keys missing from docs/configuration.md: {sorted(missing)}"


def test_the_documented_example_is_valid() -> None:
    import tomllib

    block = re.search(r"## A complete example\s+```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    _, errors = parse_config(tomllib.loads(block.group(1)), "docs")
    assert errors == []


def test_section_reports_wrong_types_without_raising() -> None:
    errors: list = []  # type: ignore[type-arg]
    section = Section({"n": "3"}, "f", "t", errors)
    assert section.integer("n", 7) == 7
    assert str(errors[0]) == "f: t.n: must be an integer, not str '3'"


def test_a_kmsg_path_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f'[kmsg]\npath = "{tmp_path}/no-kmsg"\n')
    _, errors = read_config(path)
    assert [(e.key, "does not exist" in e.reason) for e in errors] == [("kmsg.path", True)]
    off = write(tmp_path, f'[kmsg]\nenabled = false\npath = "{tmp_path}/no-kmsg"\n')
    assert read_config(off)[1] == []
