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
