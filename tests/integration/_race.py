"""Agents asking for a lease at the same instant, each over its own SSH session: the
race the store's transactions must decide one at a time."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.integration._sshd import environment


def lease_race(argvs: list[list[str]]) -> list[dict[str, Any]]:
    """Each argv an ssh client of one agent: every session up and greeted first, then
    every agent asks for a node-restart lease at once; the replies, in argv order."""
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=environment()) for argv in argvs]
    try:
        for i, p in enumerate(procs):
            assert p.stdin is not None
            p.stdin.write(json.dumps({"type": "hello", "id": f"race-hello-{i}",
                                      "proto": 1}) + "\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None
            assert json.loads(p.stdout.readline())["type"] == "ack"
        for i, p in enumerate(procs):
            assert p.stdin is not None
            p.stdin.write(json.dumps({"type": "lease-request", "id": "race-lease",
                                      "action": "node-restart", "subject": f"mx{i}",
                                      "ttl_s": 600}) + "\n")
            p.stdin.flush()
        replies = []
        for p in procs:
            assert p.stdout is not None
            replies.append(json.loads(p.stdout.readline()))
        return replies
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(30)
