"""The wire protocol (agent/report/wire.py, docs/protocol.md): what is a message and what
is refused, with a reason that names the problem."""

from __future__ import annotations

import json

import pytest

from agent.report.wire import (
    AGENT_TYPES,
    MAX_DEPTH,
    MAX_LINE_BYTES,
    LineReader,
    LineTooLong,
    Message,
    WireError,
    decode,
    encode,
)


def test_a_message_goes_out_and_comes_back() -> None:
    msg = Message("finding", "a-1", {"problem": "nfs-hang", "subject": "nas-a1", "n": 3})
    line = encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = decode(line, AGENT_TYPES)
    assert back.type == "finding" and back.id == "a-1"
    assert dict(back.fields) == {"problem": "nfs-hang", "subject": "nas-a1", "n": 3}


@pytest.mark.parametrize(("line", "reason", "msg_id"), [
    (b"{not json", "malformed JSON", None),
    (b"[1, 2]", "one JSON object", None),
    (b'"hello"', "one JSON object", None),
    (b'{"type": "hello"}', "`id` missing", None),
    (b'{"type": "hello", "id": ""}', "`id` missing", None),
    (b'{"type": "hello", "id": "a b"}', "`id` missing", None),
    (b'{"type": "hello", "id": 7}', "`id` missing", None),
    (b'{"type": "hello", "id": "' + b"x" * 65 + b'"}', "`id` missing", None),
    (b'{"id": "m1"}', "`type` missing", "m1"),
    (b'{"id": "m1", "type": 3}', "`type` missing", "m1"),
    (b'{"id": "m1", "type": "reboot-everything"}', "unknown message type", "m1"),
    (b'{"id": "m1", "type": "ack"}', "unknown message type", "m1"),
    (b'{"id": "m1", "type": "hello", "proto": NaN}', "NaN is not a number", None),
    (b'{"id": "m1", "type": "hello", "x": Infinity}', "Infinity is not a number", None),
    (b'{"id": "m1", "type": "hello", "id": "m2"}', "given twice", None),
    (b'{"id": "m1", "type": "hello", "host": "a", "host": "b"}', "given twice", None),
    (b'\xff\xfe{"id": "m1"}', "not UTF-8", None),
])
def test_bad_lines_are_refused_with_the_reason(line: bytes, reason: str,
                                               msg_id: str | None) -> None:
    with pytest.raises(WireError) as caught:
        decode(line, AGENT_TYPES)
    assert reason in caught.value.reason
    assert caught.value.id == msg_id


def test_nesting_is_bounded_without_recursion() -> None:
    deep = {"id": "m1", "type": "finding", "x": json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)}
    with pytest.raises(WireError, match="nested deeper"):
        decode(json.dumps(deep).encode(), AGENT_TYPES)
    bomb = b'{"id": "m1", "type": "finding", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(WireError, match="nested deeper"):
        decode(bomb, AGENT_TYPES)


@pytest.mark.parametrize("line", [
    b'{"id": "m1", "type": "finding", "subject": "nas\\u0000a1"}',
    b'{"id": "m1", "type": "finding", "e": {"k": ["x", "\\u0000"]}}',
    b'{"id": "m1", "type": "finding", "\\u0000": 1}',
    b'{"id": "m1", "type": "finding", "s": "\\\\\\u0000"}',  # a backslash, then a NUL
])
def test_a_string_holding_a_nul_is_refused(line: bytes) -> None:
    """PostgreSQL's text cannot hold a NUL: no message carries one to the store."""
    with pytest.raises(WireError) as caught:
        decode(line, AGENT_TYPES)
    assert caught.value.reason == "a string holds a NUL character (\\u0000)"
    assert caught.value.id == "m1"


def test_a_backslash_before_u0000_is_text_not_a_nul() -> None:
    msg = decode(b'{"id": "m1", "type": "note", "s": "C:\\\\u0000", "t": "\\\\\\\\u0000"}',
                 AGENT_TYPES)
    assert msg.get("s") == "C:\\u0000" and msg.get("t") == "\\\\u0000"


def test_a_line_over_the_limit_is_refused_and_never_held_whole() -> None:
    big = b'{"id": "m1", "type": "finding", "x": "' + b"a" * MAX_LINE_BYTES + b'"}\n'
    with pytest.raises(WireError, match="over the"):
        decode(big, AGENT_TYPES)
    got = _all_lines(big + b'{"id": "m2", "type": "heartbeat"}\n' + b"tail")
    assert isinstance(got[0], LineTooLong) and got[0].size == len(big)
    assert got[1:] == [b'{"id": "m2", "type": "heartbeat"}\n', b"tail"]


def test_a_line_of_exactly_the_limit_is_a_line() -> None:
    head = b'{"id":"m1","type":"finding","x":"'
    body = b"a" * (MAX_LINE_BYTES - len(head) - 3)
    line = head + body + b'"}\n'
    assert len(line) == MAX_LINE_BYTES
    assert _all_lines(line) == [line]
    assert decode(line, AGENT_TYPES).id == "m1"


def test_encode_refuses_what_the_other_side_would_refuse() -> None:
    with pytest.raises(ValueError, match="line limit"):
        encode(Message("finding", "m1", {"x": "a" * MAX_LINE_BYTES}))
    with pytest.raises(ValueError):
        encode(Message("finding", "m1", {"x": float("nan")}))
    with pytest.raises(ValueError, match="cannot hold"):
        encode(Message("finding", "m1", {"type": "hello"}))


def _pipe_with(data: bytes) -> int:
    """A pipe's read end holding `data` then end of input (a thread writes it: a pipe
    holds only 64 KiB)."""
    import os
    import threading

    read_fd, write_fd = os.pipe()

    def write() -> None:
        with os.fdopen(write_fd, "wb") as w:
            w.write(data)

    threading.Thread(target=write, daemon=True).start()
    return read_fd


def _all_lines(data: bytes) -> list[bytes | LineTooLong]:
    """Every line LineReader gives for `data` (then end of input)."""
    import os

    fd = _pipe_with(data)
    try:
        reader = LineReader(fd)
        got: list[bytes | LineTooLong] = []
        while batch := reader.batch():
            got += batch
        return got
    finally:
        os.close(fd)


def test_the_line_reader_takes_a_burst_as_one_batch() -> None:
    import os

    lines = [b'{"id":"m%d","type":"heartbeat"}\n' % n for n in range(100)]
    fd = _pipe_with(b"".join(lines))
    try:
        reader = LineReader(fd)
        got: list[bytes | LineTooLong] = []
        batches = 0
        while batch := reader.batch():
            got += batch
            batches += 1
        assert got == lines and batches <= 3  # a burst, not a batch per line
    finally:
        os.close(fd)


def test_the_line_reader_skips_an_over_long_line_and_keeps_the_rest() -> None:
    import os

    exact = b'{"id":"m1","type":"heartbeat","x":"' + b"a" * (MAX_LINE_BYTES - 38) + b'"}\n'
    assert len(exact) == MAX_LINE_BYTES
    big = b"b" * (3 * MAX_LINE_BYTES) + b"\n"
    fd = _pipe_with(exact + big + b"ok\n" + b"last without newline")
    try:
        reader = LineReader(fd)
        got: list[bytes | LineTooLong] = []
        while batch := reader.batch():
            got += batch
    finally:
        os.close(fd)
    assert got[0] == exact
    assert isinstance(got[1], LineTooLong) and got[1].size == len(big)
    assert got[2:] == [b"ok\n", b"last without newline"]


@pytest.mark.parametrize("over", [1, 10, 87, 65_000, 70_000])
def test_the_line_after_an_over_long_line_is_kept_wherever_the_reads_fall(over: int) -> None:
    """The over-long line's newline can come in the same read that takes the buffer
    past the limit: the line after it is still a line."""
    big = b"x" * (MAX_LINE_BYTES + over) + b"\n"
    got = _all_lines(b"first\n" + big + b"ok\n")  # reads no longer end on the limit
    assert got[0] == b"first\n"
    assert isinstance(got[1], LineTooLong) and got[1].size == len(big)
    assert got[2:] == [b"ok\n"]


def test_an_over_long_last_line_without_its_newline_is_refused_too() -> None:
    big = b"x" * (MAX_LINE_BYTES + 10)
    got = _all_lines(b"first\n" + big)
    assert got[0] == b"first\n"
    assert isinstance(got[1], LineTooLong) and got[1].size == len(big)
    assert len(got) == 2
