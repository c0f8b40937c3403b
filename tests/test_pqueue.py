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
