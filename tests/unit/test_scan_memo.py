"""scan's output path (agent/detect/scanrender.py) prints what rendering scan_stream's
hits one by one prints, line for line, with the same summary, whether a message is seen
for the first time or again, whatever the line's form; and its memo stays bounded."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from typing import Any

import pytest

from agent.commands.scan import Renderer
from agent.detect import scanrender
from agent.detect.matcher import Matcher
from agent.detect.scanner import MAX_LINE_BYTES, ScanStats, scan_stream
from agent.detect.scanrender import message_start, scan_rendered
from agent.detect.signature import MAX_MATCH_CHARS
from agent.sources.lineformat import parse_line
from tests.unit._signatures import BENIGN, builtin

MAIL = ("Oct 20 03:18:44 mx1 postfix/smtpd[123]: warning: unknown[203.0.113.9]: SASL LOGIN "
        "authentication failed: UGFzc3dvcmQ6")


def _messages() -> list[str]:
    """Every kernel example's bare message, and benign lines."""
    return [parse_line(ex.line).text for s in builtin().signatures if s.source == "kmsg"
            for ex in s.examples] + list(BENIGN)


def _corpus(seed: int) -> bytes:
    """Messages repeated in every form: dmesg stamps of each width, plain, other prefixes,
    CRLF, a NUL, invalid UTF-8, a mail line, long and over-long lines."""
    rng = random.Random(seed)
    messages = _messages()
    forms: list[Callable[[str, float], str]] = [
        lambda m, t: f"[{t:12.6f}] {m}", lambda m, t: f"[{t:.3f}]{m}", lambda m, t: m,
        lambda m, t: f"[{t:30.6f}] {m}", lambda m, t: f"<4>[{t:12.6f}] {m}",
        lambda m, t: f"Oct 20 03:18:44 host kernel: {m}", lambda m, t: f"[{t:12.6f}] {m}\r",
        lambda m, t: f"[{t:12.6f}] {m}\0", lambda m, t: f"6,{int(t)},{int(t)},-;{m}",
    ]
    lines: list[bytes] = []
    for n in range(3000):
        m = rng.choice(messages)
        lines.append(rng.choice(forms)(m, n * 0.731).encode())
        if n % 500 == 0:
            lines += [MAIL.encode(), b"[   12.000001] caf\xe9 " + m.encode(),
                      b"[   12.000002] " + m.encode() + b" " + b"x" * MAX_MATCH_CHARS,
                      b"[   12.000003] " + m.encode() + b"y" * MAX_LINE_BYTES]
    return b"\n".join(lines) + b"\n"


def _plain_output(data: bytes, as_json: bool) -> tuple[str, dict[str, Any]]:
    stats = ScanStats()
    render = Renderer(as_json)
    out = "".join(render(hit) + "\n"
                  for hit in scan_stream(io.BytesIO(data), Matcher(builtin()), stats))
    return out, vars(stats)


def _memo_output(data: bytes, as_json: bool) -> tuple[str, dict[str, Any]]:
    stats = ScanStats()
    out = "".join(scan_rendered(io.BytesIO(data), Matcher(builtin()), stats,
                                Renderer(as_json)))
    return out, vars(stats)


@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.parametrize("engine", ["hyperscan", "portable"])
def test_the_memo_prints_what_each_hit_rendered_prints(as_json: bool, engine: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEWARDEN_MATCHER", engine)
    data = _corpus(seed=7)
    plain, plain_stats = _plain_output(data, as_json)
    memo, memo_stats = _memo_output(data, as_json)
    assert memo.splitlines() == plain.splitlines()
    assert memo_stats == plain_stats
    assert plain_stats["matched_lines"] > 1000 and plain_stats["truncated"] > 0
    assert plain_stats["nul_lines"] > 0 and plain_stats["invalid_utf8"] > 0


def test_a_full_memo_is_emptied_and_the_output_is_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanrender, "MEMO_ENTRIES", 3)
    data = _corpus(seed=11)
    assert _memo_output(data, True) == _plain_output(data, True)


def test_the_memo_is_used_for_a_repeated_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeat costs no regex: the matcher confirms the first line only."""
    calls = []
    for name in ("confirm", "confirm_kernel"):
        real = getattr(Matcher, name)

        def counted(self: Matcher, *args: Any, _real: Any = real) -> Any:
            calls.append(args)
            return _real(self, *args)

        monkeypatch.setattr(Matcher, name, counted)
    line = "nfs: server nas-a1 not responding, still trying"
    data = "".join(f"[{n:12.6f}] {line}\n" for n in range(50)).encode()
    out, stats = _memo_output(data, False)
    assert len(out.splitlines()) == 50 and stats["matched_lines"] == 50
    assert len(calls) == 1


@pytest.mark.parametrize("raw", [
    b"[  123.456789] text", b"[1.2]text", b"[1.2]  two spaces", b"[ 1.2] ", b"[1.2]",
    b"[1.] x", b"[.5] x", b"[1.2.3] x", b"[12345678901234567890.1] x",
    b"[1234567890123456789.1] x", b"[  1.2]] x", b"[\xd9\xa1.2] x", b"[1,2] x",
    b"[Wed Oct 20 03:18:44 2021] x", b"<6>[  1.2] x", b"6,1,2,-;x", b"kern  :info  : x",
    b"Oct 20 03:18:44 h kernel: x", b"2021-10-20T03:18:44,123456+00:00 x", b"plain x",
    b"nfs: server x", b"\xc3\xa9t\xc3\xa9", b"", b"x\r", b"[ 1.2] x\r", b"\t[1.2] x",
])
def test_message_start_agrees_with_the_line_parser(raw: bytes) -> None:
    start = message_start(raw)
    parsed = parse_line(raw.decode("utf-8", "replace"))
    if start >= 0:
        assert raw[start:].decode().rstrip("\r\n") == parsed.text
        assert parsed.facility is None and parsed.fields == {}


def test_unique_then_repeated_messages_print_the_same() -> None:
    """Unique messages (each group one line, matched once), then repeated ones (groups of
    many, and the memo across blocks): the output is the same as each hit rendered."""
    rng = random.Random(9)
    messages = [m for m in _messages() if any(c.isdigit() for c in m)]
    unique = ["".join(str(rng.randrange(10)) if c.isdigit() else c for c in rng.choice(messages))
              for _ in range(15000)]
    repeated = [rng.choice(messages) for _ in range(15000)]
    data = "".join(f"[{n:12.6f}] {m}\n" for n, m in enumerate(unique + repeated)).encode()
    assert _memo_output(data, True) == _plain_output(data, True)
