"""ICON's persistent queue: SQLite in WAL mode with synchronous=FULL.

Why SQLite rather than a hand-made fsync'd log: appending a batch and deleting what was
written are each one atomic, durable transaction, sequence numbers come for free and are
never reused (AUTOINCREMENT; the IDB side relies on that to make replays idempotent), and a
crash at any byte leaves either the old or the new state, with no log compaction or torn
record handling of our own. The price, one fsync per transaction, is paid per batch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError


@dataclass(frozen=True)
class Item:
    seq: int
    kind: str  # event | heartbeat | session
    ts: float  # scenario time it was queued
    body: dict[str, Any]


class PersistentQueue:
    """Thread-safe: intake appends while the writer peeks and deletes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " kind TEXT NOT NULL, ts REAL NOT NULL, body TEXT NOT NULL, event_ts REAL)"
            )
            # Who this queue is: its sequence numbers mean something only with it. A queue
            # made anew (its disk lost) starts them over, and an IDB must not take them for
            # numbers it has written already.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('identity', ?)",
                (uuid.uuid4().hex,),
            )
            self.identity: str = self._db.execute(
                "SELECT value FROM meta WHERE key = 'identity'"
            ).fetchone()[0]
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(queue)")}
            if "event_ts" not in columns:  # a queue an older version left behind
                self._db.execute("ALTER TABLE queue ADD COLUMN event_ts REAL")
                self._db.execute(
                    "UPDATE queue SET event_ts = json_extract(body, '$.ts') WHERE kind = 'event'"
                )
            # The status asks for the oldest queued call at every report: an index, not a
            # pass over a backlog that an outage makes hours long.
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS queue_event_ts ON queue (event_ts)"
                " WHERE event_ts IS NOT NULL"
            )
            # How many items of each kind wait, kept beside the table: the status asks at
            # every report, and a count(*) over an outage's backlog is a pass over it.
            self._counts: dict[str, int] = dict(
                self._db.execute("SELECT kind, count(*) FROM queue GROUP BY kind").fetchall()
            )
        except (sqlite3.Error, OSError) as exc:
            raise TestbedError(f"cannot open the persistent queue {path}: {exc}") from None

    def append(self, items: list[tuple[str, float, dict[str, Any]]]) -> int:
        """Durably queue items (kind, ts, body) in one transaction; returns the depth."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO queue (kind, ts, body, event_ts) VALUES (?, ?, ?, ?)",
                    [
                        (kind, ts, json.dumps(body), body["ts"] if kind == "event" else None)
                        for kind, ts, body in items
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for kind, _ts, _body in items:
                self._counts[kind] = self._counts.get(kind, 0) + 1
        return self.depth()

    def head(self, limit: int) -> tuple[int, float | None]:
        """How many items the next `peek(limit)` would return, and when the first was
        queued: what deciding whether to write costs, without decoding a single body (a
        writer retrying an unreachable IDB asks this at every attempt)."""
        with self._lock:
            count, first = self._db.execute(
                "SELECT count(*), (SELECT ts FROM queue ORDER BY seq LIMIT 1)"
                " FROM (SELECT 1 FROM queue ORDER BY seq LIMIT ?)",
                (limit,),
            ).fetchone()
        return int(count), first

    def peek(self, limit: int) -> list[Item]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, ts, body FROM queue ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Item(seq, kind, ts, json.loads(body)) for seq, kind, ts, body in rows]

    def delete_through(self, seq: int) -> None:
        with self._lock:
            gone = self._db.execute("DELETE FROM queue WHERE seq <= ? RETURNING kind", (seq,))
            for (kind,) in gone.fetchall():
                self._counts[kind] -= 1

    def depth(self, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return sum(self._counts.values())
            return self._counts.get(kind, 0)

    def oldest_event_ts(self) -> float | None:
        """The scenario time of the oldest event still queued (None: no event queued)."""
        with self._lock:
            return self._db.execute(
                "SELECT min(event_ts) FROM queue WHERE event_ts IS NOT NULL"
            ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def queued_events(path: Path | str) -> list[str]:
    """The ids of the events a queue file holds, read without disturbing it (its ICON may
    be dead or running); none if there is no file or it cannot be read."""
    if not Path(path).exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            bodies = db.execute("SELECT body FROM queue WHERE kind = 'event'").fetchall()
    except sqlite3.Error:
        return []
    return [json.loads(body)["id"] for (body,) in bodies]


SQLITE_FILES = ("", "-wal", "-shm")  # a queue file and the WAL files beside it


def remove_queue(path: Path | str) -> None:
    """A queue gone with its disk: the file and its WAL files."""
    for suffix in SQLITE_FILES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)
