"""The reporter's spool (agent/report/spool.py): order and ids that survive a restart,
answered messages that leave for good, a torn last line, the bounds and what is
dropped first (never a finding or an outcome)."""

from __future__ import annotations

from pathlib import Path

from agent.report.spool import ACKED_FILE, SPOOL_FILE, Spool


def ids_and_kinds(spool: Spool) -> list[tuple[str, str]]:
    return [(m.id, m.type) for m in spool.pending(10_000)]


def test_messages_wait_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = [spool.put("finding", {"n": n}) for n in range(5)]
    assert len(set(first)) == 5 and all(i.startswith(spool.token + "-") for i in first)
    assert spool.answered(first[0]) and spool.answered(first[1])
    assert not spool.answered(first[3])  # only the first waiting one can be answered
    spool.close()
    again = Spool(tmp_path)
    assert [m.id for m in again.pending(10)] == first[2:]
    assert [m.get("n") for m in again.pending(10)] == [2, 3, 4]
    later = again.put("finding", {"n": 5})
    assert later not in first and again.token == spool.token  # ids never reused


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("finding", {"n": 0})
    spool.close()
    with (tmp_path / SPOOL_FILE).open("ab") as f:
        f.write(b'{"seq": 2, "type": "finding", "id": "x-2", "n"')  # killed mid-write
    again = Spool(tmp_path)
    assert [m.get("n") for m in again.pending(10)] == [0]
    assert again.put("finding", {"n": 1}).endswith("-2")


def test_a_wiped_spool_gets_a_new_token(tmp_path: Path) -> None:
    a = Spool(tmp_path / "a")
    b = Spool(tmp_path / "b")
    assert a.token != b.token


def test_when_full_heartbeats_go_first_then_plans_never_findings(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_messages=10)
    for n in range(4):
        spool.put("heartbeat", {"n": n})
        spool.put("finding", {"n": n})
    spool.put("plan", {"n": 0})
    spool.put("outcome", {"n": 0})
    spool.put("finding", {"n": 4})  # the 11th: the oldest heartbeat goes
    kinds = [k for _, k in ids_and_kinds(spool)]
    assert kinds.count("heartbeat") == 3 and len(kinds) == 10
    for n in range(5, 9):
        spool.put("finding", {"n": n})  # heartbeats, then the plan, go
    kinds = [k for _, k in ids_and_kinds(spool)]
    assert "heartbeat" not in kinds and "plan" not in kinds
    assert dict(spool.stats().dropped) == {"heartbeat": 4, "plan": 1}
    for n in range(9, 20):
        spool.put("finding", {"n": n})  # nothing left to drop: findings stay
    kinds = [k for _, k in ids_and_kinds(spool)]
    assert kinds.count("finding") == 20 and kinds.count("outcome") == 1
    spool.close()
    assert [k for _, k in ids_and_kinds(Spool(tmp_path))] == kinds  # the file agrees


def test_answered_messages_are_compacted_away(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    ids = [spool.put("heartbeat", {"n": n}) for n in range(2500)]
    for msg_id in ids[:2400]:
        assert spool.answered(msg_id)
    lines = (tmp_path / SPOOL_FILE).read_bytes().count(b"\n")
    assert lines <= 100 + 1000  # answered lines are rewritten away, a thousand at a time
    assert int((tmp_path / ACKED_FILE).read_text()) == 2400
    spool.close()
    assert len(Spool(tmp_path).pending(10_000)) == 100


def test_a_message_over_the_line_limit_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        spool.put("finding", {"x": "a" * (1 << 20)})
    except ValueError as exc:
        assert "line limit" in str(exc)
    else:
        raise AssertionError("an oversized message was spooled")
    assert spool.pending(10) == []
