"""ICON's persistent queue: what the writer asks before it decides to write."""

from pathlib import Path

from testbed.pipeline.pqueue import PersistentQueue


def test_head_agrees_with_peek_without_reading_bodies(tmp_path: Path) -> None:
    queue = PersistentQueue(tmp_path / "q.sqlite")
    assert queue.head(500) == (0, None)
    queue.append([("event", 10.0 + i, {"id": f"e{i}", "ts": 1.0}) for i in range(7)])
    queue.append([("heartbeat", 20.0, {"ts": 20.0})])
    for limit in (1, 5, 8, 500):
        items = queue.peek(limit)
        assert queue.head(limit) == (len(items), items[0].ts)
    queue.delete_through(queue.peek(3)[-1].seq)
    assert queue.head(500) == (5, 13.0)
    queue.close()


def test_oldest_queued_call_is_the_smallest_call_time_not_the_first_queued(
    tmp_path: Path,
) -> None:
    queue = PersistentQueue(tmp_path / "q.sqlite")
    assert queue.oldest_event_ts() is None
    queue.append([("heartbeat", 1.0, {"ts": 0.5})])
    assert queue.oldest_event_ts() is None  # a heartbeat is not a call
    # Calls moved from a lost site arrive later with older time stamps.
    queue.append([("event", 2.0, {"id": "a", "ts": 90.0}), ("event", 3.0, {"id": "b", "ts": 40.0})])
    assert queue.oldest_event_ts() == 40.0
    queue.delete_through(queue.peek(3)[-1].seq)
    assert queue.oldest_event_ts() is None
    queue.close()


def test_depth_kept_beside_the_table_matches_a_count_across_deletes_and_a_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite"
    queue = PersistentQueue(path)

    def counted(kind: str | None = None) -> int:
        where = "" if kind is None else f" WHERE kind = '{kind}'"
        return queue._db.execute(f"SELECT count(*) FROM queue{where}").fetchone()[0]

    for round_ in range(5):
        queue.append([("event", float(i), {"id": f"{round_}-{i}", "ts": 1.0}) for i in range(9)])
        queue.append([("heartbeat", 9.0, {"ts": 9.0}), ("session", 9.0, {"id": "s", "ts": 9.0})])
        queue.delete_through(queue.peek(4 + round_)[-1].seq)
        for kind in (None, "event", "heartbeat", "session"):
            assert queue.depth(kind) == counted(kind)
    depth = queue.depth()
    queue.close()
    reopened = PersistentQueue(path)
    assert reopened.depth() == depth
    kinds = ("event", "heartbeat", "session")
    assert sum(reopened.depth(kind) for kind in kinds) == depth
    reopened.close()
