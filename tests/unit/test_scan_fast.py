"""The shortcuts of scan's per-matched-line path give exactly what the plain code gives:
matches from templates equal the constructor's, the renderer equals json.dumps, the
literal search and the multiplied-out literals find what they must."""

from __future__ import annotations

import io
import json
from re import _parser as sre_parse  # type: ignore[attr-defined]
from types import MappingProxyType
from typing import Any

import pytest

from agent.commands.scan import Renderer
from agent.detect.linear import LiteralSearch, encode
from agent.detect.literals import EXPANSION_CAP, literals_of
from agent.detect.matcher import Matcher
from agent.detect.matchtemplate import MatchTemplate
from agent.detect.scanner import ScanHit, ScanStats, _hit, scan_stream
from agent.detect.signature import match_window, message_of
from agent.model import LogLine, SignatureMatch
from agent.report.text import printable
from tests.unit._signatures import BENIGN, builtin

EVIL = ["plain", 'quote " and \\ backslash', "tab\tnew\nline\r", "esc \x1b[2K bell \x07",
        "del \x7f c1 \x85 \u2028 \u2029", "caf\u00e9 \U0001F600 \ufffd", ""]


@pytest.mark.parametrize("sig_id", [s.id for s in builtin().signatures])
def test_a_match_from_the_template_equals_the_constructors(sig_id: str) -> None:
    sig = builtin().by_id(sig_id)
    template = MatchTemplate(sig)
    for ex in sig.examples:
        _program, message = message_of(sig.source, ex.line)
        groups = sig.match_message(encode(match_window(message)))
        assert groups is not None
        line = LogLine(source=sig.source, text=message, t=1.0, facility=0)
        made = SignatureMatch(signature=sig.id, problem=sig.problem,
                              subject=sig.subject_of(groups), severity=sig.severity,
                              line=line, recovery=sig.recovery,
                              groups=MappingProxyType(dict(groups)))
        fast = template.new(line, groups)
        assert fast == made and vars(fast) == vars(made)
        assert fast.subject == ex.subject
        with pytest.raises(AttributeError):
            fast.subject = "x"  # type: ignore[misc]  # still frozen


def test_a_hit_from_the_shortcut_equals_the_constructors() -> None:
    sig = builtin().signatures[0]
    m = MatchTemplate(sig).new(LogLine(source="kmsg", text="t", t=0.0), {})
    assert _hit(7, m) == ScanHit(7, m) and vars(_hit(7, m)) == vars(ScanHit(7, m))


def _hits() -> list[ScanHit]:
    lines = [ex.line for s in builtin().signatures for ex in s.examples] + list(BENIGN)
    data = ("\n".join(lines) + "\n").encode()
    hits = list(scan_stream(io.BytesIO(data), Matcher(builtin()), ScanStats()))
    assert len(hits) >= len(builtin().signatures)
    return hits


def _old_render(hit: ScanHit, as_json: bool) -> str:
    """What `nodewarden scan` printed before the Renderer (its reference)."""
    m = hit.match
    if as_json:
        return json.dumps({
            "line_no": hit.line_no, "signature": m.signature, "problem": m.problem,
            "subject": m.subject, "severity": m.severity, "facility": m.line.facility,
            "recovery": m.recovery, "source": m.line.source, "text": m.line.text,
            "groups": dict(m.groups), "truncated": m.line.truncated,
        }, ensure_ascii=False)
    tag = f"[{m.signature}]" + (" RECOVERY" if m.recovery else "")
    return f"{hit.line_no} {m.problem} {printable(m.subject)} {tag} {printable(m.line.text)}"


def _variants(hit: ScanHit) -> list[ScanHit]:
    out = [hit]
    for i, evil in enumerate(EVIL):
        line = LogLine(source=hit.match.line.source, text=evil, t=0.0,
                       facility=(None, 0, 1)[i % 3], truncated=bool(i % 2))
        groups: dict[str, Any] = {"a": evil, evil: "b"} if i % 2 else {}
        m = SignatureMatch(signature=hit.match.signature, problem=hit.match.problem,
                           subject=evil, severity=hit.match.severity, line=line,
                           recovery=hit.match.recovery, groups=MappingProxyType(groups))
        out.append(ScanHit(hit.line_no + i, m))
    return out


@pytest.mark.parametrize("as_json", [True, False])
def test_the_renderer_prints_what_the_plain_code_printed(as_json: bool) -> None:
    render = Renderer(as_json)
    for hit in _hits():
        for variant in _variants(hit):
            assert render(variant) == _old_render(variant, as_json)


def test_the_text_form_escapes_control_characters() -> None:
    hit = _variants(_hits()[0])[4]
    out = Renderer(False)(hit)
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2K" in out


def test_the_literal_search_finds_the_first_literal() -> None:
    search = LiteralSearch([b"not responding", b"Oops: ", "caf\u00e9".encode(), b"\\x"])
    data = b"benign\nx\xff\xfeOops: 1\nnfs: server a not responding\ncaf\xc3\xa9 \\x41"
    first = data.index(b"Oops")
    assert search.find(data) == first
    assert search.find(data, first + 1) == data.index(b"not responding")
    assert search.find(data, data.index(b"caf")) == data.index(b"caf")
    assert search.find(data, data.index(b"\\x") + 1) == -1
    assert search.find(b"") == -1
    with pytest.raises(ValueError):
        LiteralSearch([b""])


@pytest.mark.parametrize(("regex", "literals"), [
    (r"\S+ (?P<i>\w+): [Ll]ink (?:is )?[Dd]own\b",
     {f": {a}ink {b}{c}own" for a in "Ll" for b in ("is ", "") for c in "Dd"}),
    (r"(?P<port>ata\d+)\.\d+: (?:status|error): \{ ", {": status: { ", ": error: { "}),
    (r"nfs: server (?P<s>\S+) not responding", {" not responding"}),
])
def test_literals_are_multiplied_out_over_small_parts(regex: str, literals: set[str]) -> None:
    assert set(literals_of(sre_parse.parse(regex).data)) == literals


def test_multiplying_out_stops_at_the_cap() -> None:
    got = literals_of(sre_parse.parse(r"[ab][cd][ef][gh][ij]xyz").data)
    assert 0 < len(got) <= EXPANSION_CAP
    assert all(len(lit) >= 3 for lit in got)
    for text in ("acegixyz", "bdfhjxyz"):
        assert any(lit in text for lit in got)


@pytest.mark.parametrize("sig_id", [s.id for s in builtin().signatures])
def test_every_example_holds_one_of_its_literals(sig_id: str) -> None:
    sig = builtin().by_id(sig_id)
    for ex in sig.examples:
        assert any(lit in ex.line for lit in sig.literals), (sig.literals, ex.line)


def test_the_kernel_confirm_gives_what_confirm_gives() -> None:
    matcher = Matcher(builtin())
    kernel = matcher.kernel_indices
    lines = [ex.line for s in builtin().signatures for ex in s.examples] + list(BENIGN)
    lines.append("x" * 5000 + " nfs: server a not responding")  # windowed
    for raw in lines:
        line = LogLine(source="kmsg", text=message_of("kmsg", raw)[1], t=0.0)
        for cands in (set(kernel), set(sorted(kernel)[:1]), set()):
            assert ([vars(m) for m in matcher.confirm_kernel(line, cands)]
                    == [vars(m) for m in matcher.confirm(line, cands)])
