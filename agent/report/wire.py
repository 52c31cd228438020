"""The agent-coordinator wire protocol: one JSON object per line, both ways.

docs/protocol.md is its reference. Every message has a `type` and an `id`; the agent's
first is `hello` with `proto`; the coordinator answers each one with `ack`, `error`
(with a `reason`), or for a lease request `lease-grant` / `lease-deny`. What arrives
is hostile until checked: a line over MAX_LINE_BYTES, bytes that are not UTF-8, JSON
that is not one object, NaN or infinity, a key given twice, nesting too deep, a missing
or malformed `type` or `id`, an unknown type, a string holding a lone surrogate or a NUL
(no store keeps either): each is a `WireError` that names the problem (and the message's
id when it could be read), never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

PROTO = 1
#: the longest line either side accepts, newline included
MAX_LINE_BYTES = 1 << 20
#: what a JSON object may nest to (a finding's fields are a few levels deep)
MAX_DEPTH = 16
#: the longest reason a reply carries
MAX_REASON = 1000
#: message ids: the agent's own tokens, short and plain (they land in logs and the store)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: a NUL in json.dumps' output: `\u0000` after an even run of backslashes (each pair is
#: a backslash of the string itself)
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

#: what an agent sends
AGENT_TYPES = frozenset({
    "hello", "heartbeat", "finding", "resolved", "verdict", "plan", "outcome", "note", "page",
    "lease-request", "lease-renew", "lease-release",
})
#: what a coordinator sends
COORDINATOR_TYPES = frozenset({"ack", "error", "lease-grant", "lease-deny"})


class WireError(ValueError):
    """A line that is not a valid message: `reason` says why, `id` is the message's id
    when it could be read (the error reply carries it), `fatal` ends the session after
    the reply (a wrong protocol version)."""

    def __init__(self, reason: str, msg_id: str | None = None, *, fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.id = msg_id
        self.fatal = fatal


@dataclass(frozen=True)
class Message:
    """One message: its type, its id and every other field (read-only)."""

    type: str
    id: str
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, **self.fields}


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """A coordinator's reply as one line; a reason too long for a line is cut."""
    if "reason" in reply and len(str(reply["reason"])) > MAX_REASON:
        reply = {**reply, "reason": str(reply["reason"])[:MAX_REASON] + "..."}
    return json.dumps(reply, ensure_ascii=True, allow_nan=False, separators=(",", ":"),
                      sort_keys=True).encode("ascii") + b"\n"


def encode(msg: Message) -> bytes:
    """One line of JSON (ASCII, no NaN); ValueError when it would be over the limit."""
    for name in ("type", "id"):
        if name in msg.fields:
            raise ValueError(f"a message's fields cannot hold {name!r}")
    line = json.dumps(msg.as_dict(), ensure_ascii=True, allow_nan=False,
                      separators=(",", ":"), sort_keys=True).encode("ascii") + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"message {msg.id} is {len(line)} bytes, over the "
                         f"{MAX_LINE_BYTES}-byte line limit")
    return line


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} given twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of a float's range")
    return value


def _depth(value: Any) -> int:
    """How deep a decoded value nests (iteratively: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
    return deepest


def decode(line: bytes, allowed: Set[str]) -> Message:
    """A message from one line (its newline optional); WireError when it is not one."""
    if len(line) > MAX_LINE_BYTES:
        raise WireError(f"line over the {MAX_LINE_BYTES}-byte limit")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("line is not UTF-8") from None
    try:
        raw = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                         parse_float=_finite_float)
    except RecursionError:
        raise WireError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise WireError(f"malformed JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise WireError("a message is one JSON object")
    msg_id = raw.get("id")
    if not valid_id(msg_id):
        raise WireError("`id` missing or not a token of 1-64 letters, digits, '.', '_', "
                        "':' or '-'")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise WireError("`type` missing or not a string", msg_id)
    if kind not in allowed:
        raise WireError(f"unknown message type {kind[:64]!r}", msg_id)
    if _depth(raw) > MAX_DEPTH:
        raise WireError(f"JSON nested deeper than {MAX_DEPTH} levels", msg_id)
    try:  # a \\ud800 escape decodes to a lone surrogate, which no store can keep
        dumped = json.dumps(raw, ensure_ascii=False)
        dumped.encode("utf-8")
    except UnicodeEncodeError:
        raise WireError("a string holds a lone surrogate (not Unicode text)", msg_id) from None
    if _NUL.search(dumped):  # a \\u0000 escape: PostgreSQL's text cannot hold it
        raise WireError("a string holds a NUL character (\\u0000)", msg_id)
    fields = {k: v for k, v in raw.items() if k not in ("type", "id")}
    return Message(kind, str(msg_id), MappingProxyType(fields))


class LineReader:
    """Lines from a file descriptor in batches: `batch()` waits for at least one, then
    takes every complete line already there (up to `max_lines`), so a burst is answered
    as one (the coordinator commits it once). Lines over MAX_LINE_BYTES are skipped as
    they stream by and given as LineTooLong. An empty batch: end of input."""

    def __init__(self, fd: int, max_lines: int = 256) -> None:
        self._fd = fd
        self._max = max_lines
        self._buffer = b""
        self._skipping = 0  # bytes of an over-long line skipped so far (0: not skipping)
        self._eof = False

    def batch(self) -> list[bytes | LineTooLong]:
        out: list[bytes | LineTooLong] = []
        while not out and not self._eof:
            self._fill(block=True)
            self._take(out)
        while len(out) < self._max and not self._eof and self._ready():
            self._fill(block=False)
            self._take(out)
        self._last(out)
        return out

    def available(self, *, read: bool) -> list[bytes | LineTooLong]:
        """For a caller that selects (coordinator/serve.py): one read when `read` (the
        descriptor is readable, and non-blocking), then the complete lines buffered, up
        to `max_lines`; `more` tells whether lines are left, `eof` whether input ended."""
        out: list[bytes | LineTooLong] = []
        if read and not self._eof:
            with contextlib.suppress(BlockingIOError):
                self._fill(block=True)
        self._take(out)
        self._last(out)
        return out

    def _last(self, out: list[bytes | LineTooLong]) -> None:
        """At the end of input: a last line without its newline is a line, and an
        over-long one being skipped is refused like any other."""
        if not self._eof or out:
            return
        if self._skipping:
            out.append(LineTooLong(self._skipping + len(self._buffer)))
            self._skipping, self._buffer = 0, b""
        elif self._buffer:
            out.append(self._buffer)
            self._buffer = b""

    @property
    def more(self) -> bool:
        return b"\n" in self._buffer

    @property
    def eof(self) -> bool:
        return self._eof and not self._buffer

    def _ready(self) -> bool:
        return bool(select.select([self._fd], [], [], 0)[0])

    def _fill(self, *, block: bool) -> None:
        if not block and not self._ready():
            return
        chunk = os.read(self._fd, 1 << 16)
        if not chunk:
            self._eof = True
        self._buffer += chunk

    def _take(self, out: list[bytes | LineTooLong]) -> None:
        while len(out) < self._max:
            if self._skipping:
                nl = self._buffer.find(b"\n")
                if nl < 0:
                    self._skipping += len(self._buffer)
                    self._buffer = b""
                    return
                out.append(LineTooLong(self._skipping + nl + 1))
                self._skipping, self._buffer = 0, self._buffer[nl + 1:]
                continue
            nl = self._buffer.find(b"\n", 0, MAX_LINE_BYTES)
            if nl >= 0:
                out.append(self._buffer[:nl + 1])
                self._buffer = self._buffer[nl + 1:]
            elif len(self._buffer) >= MAX_LINE_BYTES:  # no newline within the limit
                end = self._buffer.find(b"\n", MAX_LINE_BYTES)
                if end < 0:
                    self._skipping, self._buffer = len(self._buffer), b""
                else:  # the over-long line ends here: what follows is the next line
                    out.append(LineTooLong(end + 1))
                    self._buffer = self._buffer[end + 1:]
            else:
                return


class LineTooLong:
    """A line that went over the limit: its bytes were skipped up to its newline."""

    def __init__(self, size: int) -> None:
        self.size = size
