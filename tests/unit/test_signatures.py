"""The signature catalog: shipped data, the loader's checks, malformed user files, docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.detect.catalog import (
    KERNEL_PROBLEMS,
    SEVERITIES,
    Catalog,
    check_examples,
    load_catalog,
    markdown_table,
    parse_signature_file,
)
from agent.schema import ConfigError
from tests.unit._signatures import GOOD, REPO, builtin

ALL_IDS = [s.id for s in builtin().signatures]



def test_shipped_catalog_loads_without_errors() -> None:
    catalog, errors = load_catalog(None)
    assert errors == []
    assert len(catalog) >= len(KERNEL_PROBLEMS)


def test_kernel_problem_ids_are_exactly_the_issue_list() -> None:
    kernel = {s.problem for s in builtin().signatures if s.source == "kmsg" and not s.recovery}
    assert kernel == set(KERNEL_PROBLEMS)
    assert len(KERNEL_PROBLEMS) == 31


def test_mail_problems_present() -> None:
    mail = {s.problem for s in builtin().signatures if s.source == "log:mail"}
    assert mail == {"auth-failure", "auth-service-failing", "auth-service-overloaded",
                    "mail-deferred", "mail-queue-warning", "spamfilter-error"}


@pytest.mark.parametrize("sig_id", ALL_IDS)
def test_signature_is_complete(sig_id: str) -> None:
    sig = builtin().by_id(sig_id)
    assert len(sig.examples) >= 2
    assert len(sig.counter_examples) >= 1
    assert sig.severity in SEVERITIES
    assert sig.description and sig.reference
    if sig.recovery:
        assert sig.clears == sig.problem
        assert sig.clears in builtin().problems
    else:
        assert sig.clears is None


@pytest.mark.parametrize("sig_id", ALL_IDS)
def test_examples_and_counter_examples(sig_id: str) -> None:
    sig = builtin().by_id(sig_id)
    for ex in sig.examples:
        assert sig.extract(ex.line) == ex.subject, ex.line
    for line in sig.counter_examples:
        assert sig.match_line(line) is None, line


@pytest.mark.parametrize("sig_id", ALL_IDS)
def test_literal_is_in_every_example(sig_id: str) -> None:
    sig = builtin().by_id(sig_id)
    assert sig.literals
    for ex in sig.examples:
        assert any(lit in ex.line for lit in sig.literals), ex.line


def test_check_examples_clean_for_builtin() -> None:
    assert check_examples(builtin()) == []


def test_ids_are_unique() -> None:
    assert len(ALL_IDS) == len(set(ALL_IDS))


# --------------------------------------------------------------------------- user files
def _load(tmp_path: Path, name: str, text: str | bytes) -> tuple[Catalog, list[ConfigError]]:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_catalog(tmp_path)


def test_user_signature_is_loaded(tmp_path: Path) -> None:
    catalog, errors = _load(tmp_path, "site.toml", GOOD)
    assert errors == []
    sig = catalog.by_id("site.nas-gone")
    assert sig.file == str(tmp_path / "site.toml")
    assert len(catalog) == len(builtin()) + 1


def test_missing_user_dir_is_not_an_error(tmp_path: Path) -> None:
    catalog, errors = load_catalog(tmp_path / "absent")
    assert errors == []
    assert len(catalog) == len(builtin())


def _one_error(tmp_path: Path, text: str | bytes) -> ConfigError:
    _catalog, errors = _load(tmp_path, "bad.toml", text)
    assert len(errors) >= 1, errors
    assert all(e.file == str(tmp_path / "bad.toml") for e in errors)
    return errors[0]


def test_bad_toml(tmp_path: Path) -> None:
    e = _one_error(tmp_path, "[[signature]\nid = ")
    assert e.key == "-" and "not valid TOML" in e.reason


def test_not_utf8(tmp_path: Path) -> None:
    e = _one_error(tmp_path, b"\xff\xfe[[signature]]")
    assert "not UTF-8" in e.reason


def test_bad_regex(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace("(?P<export>\\S+)", "(?P<export>\\S+"))
    assert e.key == "signature[site.nas-gone].regex"
    assert "bad regex" in e.reason


def test_start_anchor_refused_end_anchor_allowed(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace("'nasd:", "'^nasd:"))
    assert e.key == "signature[site.nas-gone].regex"
    assert "matched at the start of the message already" in e.reason
    e = _one_error(tmp_path, GOOD.replace("vanished'", "vanished\\Z'"))
    assert "end the regex with '$'" in e.reason


def test_a_log_signature_must_name_its_program(tmp_path: Path) -> None:
    mail = GOOD.replace('source = "kmsg"', 'source = "log:mail"')
    e = _one_error(tmp_path, mail)
    assert e.key == "signature[site.nas-gone].program" and "is required" in e.reason
    e = _one_error(tmp_path, GOOD.replace('source = "kmsg"', 'source = "kmsg"\nprogram = "x"'))
    assert e.key == "signature[site.nas-gone].program" and "has no program" in e.reason


def test_lookaround_refused(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace("vanished'", "vanished(?!x)'"))
    assert "lookarounds" in e.reason


@pytest.mark.parametrize(("plain", "flagged"), [("'nasd:", "'(?i)nasd:"),
                                                ("vanished'", "(?i:vanished)'")])
def test_inline_flags_refused_even_scoped(tmp_path: Path, plain: str, flagged: str) -> None:
    """A case-insensitive part would make its required literal (the portable engine's
    prefilter) miss the other spellings: the engines would disagree."""
    e = _one_error(tmp_path, GOOD.replace(plain, flagged))
    assert e.key == "signature[site.nas-gone].regex" and "inline flags" in e.reason


def test_missing_id(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace('id = "site.nas-gone"\n', ""))
    assert e.key == "signature[#0].id" and "required" in e.reason


def test_missing_field(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace('reference = "site runbook 12"\n', ""))
    assert e.key == "signature[site.nas-gone].reference" and "required" in e.reason


def test_unknown_field(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace('severity = "error"', 'severity = "error"\nsevrity = 1'))
    assert e.key == "signature[site.nas-gone].sevrity" and "unknown field" in e.reason


def test_unknown_severity_and_source(tmp_path: Path) -> None:
    text = GOOD.replace('"error"', '"fatal"').replace('"kmsg"', '"journal"')
    _catalog, errors = _load(tmp_path, "bad.toml", text)
    keys = {e.key: e.reason for e in errors}
    assert "unknown severity" in keys["signature[site.nas-gone].severity"]
    assert "unknown source" in keys["signature[site.nas-gone].source"]


def test_duplicate_id_within_and_across_files(tmp_path: Path) -> None:
    _catalog, errors = _load(tmp_path, "bad.toml", GOOD + GOOD)
    assert [e.key for e in errors] == ["signature[site.nas-gone].id"]
    assert "duplicate" in errors[0].reason
    clash = GOOD.replace("site.nas-gone", "hung-task.blocked")
    (tmp_path / "bad.toml").write_text(clash)
    _catalog, errors = load_catalog(tmp_path)
    assert [e.key for e in errors] == ["signature[hung-task.blocked].id"]
    assert "agent/signatures/kernel-hang.toml" in errors[0].reason


def test_example_that_does_not_match(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace("nasd: export /srv/x vanished", "nasd: nothing"))
    assert e.key == "signature[site.nas-gone].examples[1]" and "does not match" in e.reason


def test_example_with_wrong_subject(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace('subject = "/srv/x"', 'subject = "/srv/y"'))
    assert e.key == "signature[site.nas-gone].examples[1]"
    assert "'/srv/x'" in e.reason and "'/srv/y'" in e.reason


def test_counter_example_that_matches(tmp_path: Path) -> None:
    e = _one_error(tmp_path, GOOD.replace('"nasd: export /srv/mail mounted"',
                                          '"nasd: export /srv/z vanished"'))
    assert e.key == "signature[site.nas-gone].counter_examples[0]" and "matches" in e.reason


def test_too_few_examples(tmp_path: Path) -> None:
    text = GOOD.replace('  { line = "nasd: export /srv/x vanished", subject = "/srv/x" },\n', "")
    e = _one_error(tmp_path, text)
    assert e.key == "signature[site.nas-gone].examples" and "at least 2" in e.reason


def test_no_literal_refused(tmp_path: Path) -> None:
    text = GOOD.replace("'nasd: export (?P<export>\\S+) vanished'", "'(?P<export>\\S+) \\d+'")
    e = _one_error(tmp_path, text)
    assert e.key == "signature[site.nas-gone].regex" and "literal" in e.reason


def test_malformed_file_does_not_stop_other_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("not toml at all [")
    (tmp_path / "b.toml").write_text(GOOD)
    catalog, errors = load_catalog(tmp_path)
    assert [e.file for e in errors] == [str(tmp_path / "a.toml")]
    assert catalog.by_id("site.nas-gone")


def test_signature_table_is_not_array(tmp_path: Path) -> None:
    sigs, errors = parse_signature_file(b"signature = 3\nfoo = 1\n", "x.toml")
    assert sigs == []
    assert {e.key for e in errors} == {"signature", "foo"}


# --------------------------------------------------------------------------- docs
def test_docs_table_is_up_to_date() -> None:
    doc = (REPO / "docs" / "signatures.md").read_text()
    table = markdown_table(builtin())
    assert table in doc, "regenerate: python -m agent.detect.catalog --markdown"


def test_markdown_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.detect.catalog", "--markdown"],
                         capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout == markdown_table(builtin())
