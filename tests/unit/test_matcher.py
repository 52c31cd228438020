"""The matcher: both engines give the catalog's answers, cheaply and safely."""

from __future__ import annotations

import io

import pytest

from agent.detect.catalog import MAX_MATCH_CHARS, Catalog
from agent.detect.matcher import Matcher, choose_engine
from agent.detect.scanner import ScanStats, scan_stream
from agent.model import LogLine
from agent.sources.lineformat import parse_line
from tests.unit._signatures import BENIGN, builtin

ENGINES = ["hyperscan", "portable"]
EXAMPLES = [(s.id, ex.line, ex.subject) for s in builtin().signatures for ex in s.examples]
COUNTERS = [(s.id, line) for s in builtin().signatures for line in s.counter_examples]


@pytest.fixture(scope="module", params=ENGINES)
def matcher(request: pytest.FixtureRequest) -> Matcher:
    m = Matcher(builtin(), request.param)
    assert m.engine == request.param
    return m


def _line(sig_id: str, text: str) -> LogLine:
    """The line as its source hands it over: the kernel gives the bare message (an example
    may carry a dmesg/syslog prefix), a log file the whole line."""
    source = builtin().by_id(sig_id).source
    if source == "kmsg":
        return parse_line(text, source="kmsg")
    return LogLine(source=source, text=text, t=0.0)


@pytest.mark.parametrize(("sig_id", "line", "subject"), EXAMPLES)
def test_every_example_matches_its_signature_only(
    matcher: Matcher, sig_id: str, line: str, subject: str
) -> None:
    got = matcher.match(_line(sig_id, line))
    assert [(m.signature, m.subject) for m in got] == [(sig_id, subject)]
    sig = builtin().by_id(sig_id)
    assert got[0].problem == sig.problem and got[0].recovery == sig.recovery
    assert got[0].severity == sig.severity


@pytest.mark.parametrize(("sig_id", "line"), COUNTERS)
def test_counter_examples_do_not_match_their_signature(
    matcher: Matcher, sig_id: str, line: str
) -> None:
    assert sig_id not in [m.signature for m in matcher.match(_line(sig_id, line))]


@pytest.mark.parametrize("line", BENIGN)
def test_benign_lines_match_nothing(matcher: Matcher, line: str) -> None:
    for source in builtin().sources:
        assert matcher.match(LogLine(source=source, text=line, t=0.0)) == []


def test_source_must_agree(matcher: Matcher) -> None:
    text = "nfs: server nas-a1 not responding, still trying"
    assert matcher.match(LogLine(source="log:mail", text=text, t=0.0)) == []
    assert len(matcher.match(LogLine(source="kmsg", text=text, t=0.0))) == 1


def test_groups_and_line_travel(matcher: Matcher) -> None:
    line = LogLine(source="kmsg", text="md/raid1:md0: Disk failure on sdb1, disabling device.",
                   t=5.0, facility=0)
    (m,) = matcher.match(line)
    assert m.line is line
    assert dict(m.groups) == {"array": "md0", "disk": "sdb1"}


def test_text_is_capped_for_the_regex(matcher: Matcher) -> None:
    trouble = "nfs: server nas-a1 not responding, still trying"
    early = LogLine(source="kmsg", text=trouble + "x" * 10_000_000, t=0.0)
    late = LogLine(source="kmsg", text="x" * MAX_MATCH_CHARS + trouble, t=0.0)
    assert [m.subject for m in matcher.match(early)] == ["nas-a1"]
    assert matcher.match(late) == []


def test_pathological_line_is_cheap(matcher: Matcher) -> None:
    # many near-misses for patterns with lazy quantifiers: must still return
    text = "INFO: task " + "a:1 " * 2_000_000
    assert matcher.match(LogLine(source="kmsg", text=text, t=0.0)) == []


def test_empty_catalog(matcher: Matcher) -> None:
    m = Matcher(Catalog(()), matcher.engine)
    assert m.match(LogLine(source="kmsg", text="Oops: 0000 [#1] SMP", t=0.0)) == []
    assert sorted(m.candidates(b"Oops: 0000 [#1] SMP")) == []


def test_candidate_lines_map_offsets_to_lines(matcher: Matcher) -> None:
    lines = [b"benign", b"", b"x nfs: server a not responding, still trying", b"benign",
             b"Oops: 0000 [#1] SMP"]
    got = sorted(matcher.candidates(b"\n".join(lines)))
    assert {2, 4} <= set(got)
    assert 0 not in got and 1 not in got and 3 not in got


def _corpus() -> bytes:
    """Examples in every line format, interleaved with benign lines."""
    out: list[str] = []
    for i, (sig, line, _subj) in enumerate(EXAMPLES):
        prefix = ("", "[  12.345678] ", "Oct 20 03:18:44 host kernel: ",
                  f"6,{i},123456,-;", "<3>[   5.000001] ")[i % 5]
        kernel = builtin().by_id(sig).source == "kmsg" and parse_line(line).text == line
        out.append(prefix + line if kernel else line)
        out.append(BENIGN[i % len(BENIGN)])
    return ("\n".join(out) + "\n").encode()


def test_engines_agree_on_the_scan_corpus() -> None:
    results = {}
    for engine in ENGINES:
        stats = ScanStats()
        hits = list(scan_stream(io.BytesIO(_corpus()), Matcher(builtin(), engine), stats))
        results[engine] = [(h.line_no, h.match.signature, h.match.subject) for h in hits]
    assert results["hyperscan"] == results["portable"]
    # every example was found, on its own line, whatever its prefix
    assert [(sig, subj) for _no, sig, subj in results["portable"]] == [
        (sig, subj) for sig, _line, subj in EXAMPLES
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_an_escaped_byte_in_a_raw_kmsg_record_does_not_hide_it(engine: str) -> None:
    """`/dev/kmsg` writes unprintable bytes as \\xNN; the record's text is unescaped, so
    a signature's literal may span an escape that the raw line does not spell out."""
    lines = [BENIGN[0], "0,7,123456,-;Kernel\\x20panic - not syncing: Fatal exception",
             BENIGN[1]]
    stats = ScanStats()
    block = ("\n".join(lines) + "\n").encode()
    hits = list(scan_stream(io.BytesIO(block), Matcher(builtin(), engine), stats))
    assert [(h.line_no, h.match.signature) for h in hits] == [
        (2, "kernel-panic.not-syncing")]


def test_batch_agrees_with_per_line_match() -> None:
    corpus = _corpus()
    for engine in ENGINES:
        m = Matcher(builtin(), engine)
        lines = corpus.rstrip(b"\n").split(b"\n")
        cands = m.candidates(corpus.rstrip(b"\n"))
        for i, raw in enumerate(lines):
            text = raw.decode()
            for s in m.sources:
                line = parse_line(text) if s == "kmsg" else LogLine(source=s, text=text, t=0.0)
                for hit in m.match(line):
                    assert i in cands, (engine, text)
                    assert builtin().signatures.index(builtin().by_id(hit.signature)) in cands[i]


def test_choose_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEWARDEN_MATCHER", "portable")
    assert choose_engine() == "portable"
    assert choose_engine("hyperscan") == "hyperscan"
    monkeypatch.delenv("NODEWARDEN_MATCHER")
    assert choose_engine() == "hyperscan"  # installed on every supported machine
    with pytest.raises(ValueError, match="unknown matcher engine"):
        choose_engine("re2")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_match_after_another_with_the_same_prefix_is_not_lost(engine: str) -> None:
    """Vectorscan 5.4.12 (python-hyperscan 0.8.0 and later) reports only the first of these
    two in one block: the second line's finding would be silently missed by `scan`. The
    pinned 0.7.21 (Vectorscan 5.4.11) reports both (docs/facts.md)."""
    block = (b"{42}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 1"
             b"\nbenign\n{2}[Hardware Error]: event severity: recoverable")
    m = Matcher(builtin(), engine)
    cands = m.candidates(block)
    ids = {i: {builtin().signatures[s].id for s in sigs} for i, sigs in cands.items()}
    assert "mce.ghes" in ids[0] and "mce.ghes-uncorrected" in ids[2]
