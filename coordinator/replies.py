"""The coordinator's replies that are built in more than one place (docs/protocol.md).
Imported by the thin session too, so it imports nothing."""

from __future__ import annotations

from typing import Any


def error(msg_id: str | None, reason: str) -> dict[str, Any]:
    return {"type": "error", "id": msg_id, "reason": reason}


def unknown_host(host: str) -> dict[str, Any]:
    return error(None, f"host {host[:64]!r} is not known here: add its key with "
                 "`nodewarden-coordinator keys add`")


def store_away(exc: Exception) -> dict[str, Any]:
    return error(None, f"coordinator store unavailable ({exc}): nothing was recorded; "
                 "send again later")


def ack(msg_id: str) -> dict[str, Any]:
    return {"type": "ack", "id": msg_id}
