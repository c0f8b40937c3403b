"""ICON: takes its site's events from the data source, queues them durably, writes them to
its IDB database in order, in batches, exactly once.

- Intake acknowledges a batch only once it is in the persistent queue (`pqueue.py`).
- The writer drains the queue in order: a batch at 500 records or when the oldest queued
  record is 5 s (scenario time) old, one transaction per batch. The batch's last queue
  sequence number is stored in the same transaction (`icon_progress`), so a crash between
  the commit and the queue delete replays nothing twice: rows at or below it are skipped and
  deleted from the queue on restart.
- On the virtual clock the writer writes once a heartbeat interval, at its heartbeat: the
  calls its source handed over at that instant, then the heartbeat that vouches for them,
  in one batch (a backlog goes on in batches at once).
- While the IDB is unreachable (refused, reset or black-holed) intake goes on and the
  writer retries with capped backoff; every call has a deadline, so a hung WAN is noticed
  in seconds, not never.
- Heartbeats go through the same queue, so a heartbeat in the IDB means every event queued
  before it is there too. Its value is the data source's watermark (every event up to it
  was delivered) while a source session is open, or ICON's own clock when none is (no
  source, no calls). Each also says since when this ICON holds every event (`since`: the
  vouching start its source gave, or the heartbeat's own time when no session is open):
  a member that missed calls proves nothing before it caught up (DESIGN.md section 1).
- Source sessions (start and end) are recorded in the IDB, like ICON's session tables.

Run as `python -m testbed.pipeline.icon CONFIG.json`, with the run's clock in the environment.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from testbed.clock import Clock
from testbed.errors import TestbedError
from testbed.periods import ack_timeout, next_on_grid, retry_cap
from testbed.pipeline.component import (
    call,
    connect,
    exit_on_sigterm,
    load_config,
    run_clock,
    setup_logging,
    write_status,
)
from testbed.pipeline.pqueue import Item, PersistentQueue
from testbed.pipeline.schema import IDB_DDL
from testbed.vclock.participant import VirtualClock

BATCH_MAX = 500
FLUSH_AFTER_S = 5.0  # scenario seconds
BACKOFF_START_S = 0.005  # wall seconds; doubling up to `periods.retry_cap`: retry soon after a heal
STATUS_EVERY_S = 0.05
# A session whose source has handed over nothing for this many heartbeat intervals is down
# (a source hands over a batch every interval, empty or not): a paused data source.
SILENT_HEARTBEATS = 1.5


class Icon:
    """On the virtual clock the writer parks until its next heartbeat, on the grid of the
    heartbeat interval, and writes then what intake queued meanwhile; its calls to the IDB
    are I/O the clock gives a scenario-time deadline."""

    def __init__(self, config: dict[str, Any], clock: Clock | VirtualClock) -> None:
        self.config = config
        self.clock = clock
        self.virtual = clock if isinstance(clock, VirtualClock) else None
        self.idb_name = str(config.get("idb_name", config["idb"]))
        self.route: str | None = config.get("route")
        self.via: str | None = config.get("via")  # the WAN proxy on that route
        self.name = config["name"]
        self.log = setup_logging(self.name, config["site"], clock)
        self.queue = PersistentQueue(Path(config["queue"]))  # refuses to start if it cannot open
        self.heartbeat_interval = float(config["heartbeat_interval"])
        self.backoff_start = BACKOFF_START_S
        self.backoff_cap = (
            self.heartbeat_interval
            if self.virtual is not None
            else retry_cap(clock, self.heartbeat_interval)  # type: ignore[arg-type]
        )
        self.flush_after = (
            0.0 if self.virtual is not None else float(config.get("flush_after", FLUSH_AFTER_S))
        )
        # Per open source session, its watermark; a heartbeat carries the smallest, since
        # each source vouches only for its own events (calls moved from a lost site arrive
        # on a second session).
        self.watermarks: dict[str, float] = {}
        self.vouching: dict[str, float] = {}  # per open session, its source's vouching start
        # Per open session, when its source last handed over a batch. A source that stays
        # silent past `silent_after` is down to this ICON (a real ICON's link to its
        # T-Server fails its keep-alive): it has no session then and vouches for each
        # instant only (scenarios/README.md), not for the watermark it last heard.
        self.heard_at: dict[str, float] = {}
        self.silent_after = SILENT_HEARTBEATS * self.heartbeat_interval
        if self.virtual is None:  # at least the source's own wait, in scenario seconds
            wall = ack_timeout(clock, self.heartbeat_interval)  # type: ignore[arg-type]
            self.silent_after = max(self.silent_after, 2 * wall * clock.factor)  # type: ignore[union-attr]
        self.written = 0
        self.last_seq = 0
        self.idb_connected = False
        self.next_heartbeat = clock.now()
        if self.virtual is not None:
            self.next_heartbeat = next_on_grid(clock.now(), self.heartbeat_interval)

    # --- intake ------------------------------------------------------------------------

    def _live(self) -> list[str]:
        """The open sessions whose source has been heard from lately."""
        now = self.clock.now()
        return [s for s, at in list(self.heard_at.items()) if now - at <= self.silent_after]

    @property
    def watermark(self) -> float | None:
        marks = [self.watermarks[s] for s in self._live() if s in self.watermarks]
        return min(marks) if marks else None

    @property
    def since(self) -> float | None:
        """Since when every live session's source has given this ICON all it emitted."""
        starts = [self.vouching[s] for s in self._live() if s in self.vouching]
        return max(starts) if starts else None

    def serve_intake(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._serve_session, args=(conn,), daemon=True).start()

    def _serve_session(self, conn: socket.socket) -> None:
        with conn:
            self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        session = uuid.uuid4().hex[:12]
        self._queue([("session", self.clock.now(), {"id": session, "event": "start"})])
        self.log.info("source session %s started", session)
        reader = conn.makefile("rb")
        try:
            while header := reader.readline():
                _, watermark, count, *vouching = header.split()
                items = []
                for _ in range(int(count)):
                    items.append(("event", self.clock.now(), _parse_event(reader.readline())))
                if items:
                    self._queue(items)  # durable before the acknowledgement
                self.watermarks[session] = float(watermark)
                self.vouching[session] = float(vouching[0]) if vouching else 0.0
                self.heard_at[session] = self.clock.now()
                conn.sendall(f"OK {len(items)}\n".encode())
        except (OSError, ValueError) as exc:
            self.log.warning("source session %s broke: %s", session, exc)
        finally:
            self.heard_at.pop(session, None)
            self.watermarks.pop(session, None)
            self.vouching.pop(session, None)
            self._queue([("session", self.clock.now(), {"id": session, "event": "end"})])
            self.log.info("source session %s ended", session)

    def _queue(self, items: list[tuple[str, float, dict[str, Any]]]) -> None:
        self.queue.append(items)

    # --- writer ------------------------------------------------------------------------

    def run_writer(self) -> None:
        conn: psycopg.Connection | None = None
        backoff = min(self.backoff_start, self.backoff_cap)
        while True:
            self._maybe_heartbeat()
            count, first_queued = self.queue.head(BATCH_MAX)
            if first_queued is None or (
                count < BATCH_MAX and self.clock.now() - first_queued < self.flush_after
            ):
                self._idle()
                continue
            try:
                if conn is None:
                    conn = self._connect()
                # Read (and decode) the batch only once the IDB answers: an outage's retries
                # must not cost a pass over the backlog each.
                items = self.queue.peek(BATCH_MAX)
                with call(self.clock, conn, self.idb_name, self.route, self.via):
                    self._write(conn, items)
                backoff = min(self.backoff_start, self.backoff_cap)
            except (psycopg.Error, OSError) as exc:
                if self.idb_connected or conn is not None:
                    self.log.warning("IDB unreachable, queueing (%s)", str(exc).strip()[:200])
                self.idb_connected = False
                if conn is not None:
                    conn.close()
                conn = None
                if self.virtual is not None:
                    # Again at the next heartbeat: the instant its GIM looks next anyway,
                    # so an earlier retry could not change what the GIM sees.
                    self._write_status()
                    self.virtual.sleep_until(
                        next_on_grid(self.clock.now(), self.heartbeat_interval)
                    )
                else:
                    time.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_cap)

    def _idle(self) -> None:
        """Nothing to write yet: wait for the next duty (on the virtual clock, the next
        heartbeat: what intake queues meanwhile goes with it)."""
        if self.virtual is None:
            time.sleep(0.002)
            return
        self._write_status()
        self.virtual.sleep_until(self.next_heartbeat)

    def _connect(self) -> psycopg.Connection:
        conn = connect(
            self.config["idb"],
            self.config["database"],
            self.name,
            self.clock,
            self.idb_name,
            self.route,
            self.via,
        )
        conn.autocommit = True  # see _write: no client-driven transaction on the IDB
        with call(self.clock, conn, self.idb_name, self.route, self.via), conn.transaction():
            conn.execute(IDB_DDL)
            row = conn.execute(
                "SELECT last_seq, queue_id FROM icon_progress WHERE icon = %s", (self.name,)
            ).fetchone()
        # Numbers of another queue (this ICON's disk was lost and its queue made anew) say
        # nothing of this one's.
        self.last_seq = row[0] if row and row[1] in (None, self.queue.identity) else 0
        self.queue.delete_through(self.last_seq)  # written before a crash: never twice
        self.idb_connected = True
        self.log.info(
            "IDB connected at %s (written through queue seq %d)", self.config["idb"], self.last_seq
        )
        return conn

    def _write(self, conn: psycopg.Connection, items: list[Item]) -> None:
        items = [i for i in items if i.seq > self.last_seq]
        if not items:
            return
        events = [i for i in items if i.kind == "event"]
        beats = [i for i in items if i.kind == "heartbeat"]
        sessions = [i for i in items if i.kind == "session"]
        top = items[-1].seq
        # The whole batch is ONE statement in autocommit mode. The server runs it only once
        # the message has arrived whole, and it is never left waiting for us inside a
        # transaction: a WAN cut mid-batch cannot leave a transaction open on the IDB, which
        # would hold back the snapshot xmin that every extraction of that server stops at.
        # The rows go as three JSON documents (json.dumps and the server's parser are C;
        # fourteen parameter arrays cost a Python dumper per element, every heartbeat).
        conn.execute(
            "WITH ev AS (INSERT INTO events (event_id, site, ts, payload, icon, queue_seq)"
            "   SELECT e.id, e.site, e.ts, e.payload, %(icon)s, e.seq"
            "   FROM json_to_recordset(%(events)s::json)"
            "   AS e(id text, site text, ts float8, payload text, seq int8)),"
            " hb AS (INSERT INTO heartbeats (icon, ts, since, queue_seq)"
            "   SELECT %(icon)s, h.ts, h.since, h.seq"
            "   FROM json_to_recordset(%(beats)s::json)"
            "   AS h(ts float8, since float8, seq int8)),"
            " se AS (INSERT INTO sessions (icon, session_id, event, ts, queue_seq)"
            "   SELECT %(icon)s, x.id, x.event, x.ts, x.seq"
            "   FROM json_to_recordset(%(sessions)s::json)"
            "   AS x(id text, event text, ts float8, seq int8))"
            " INSERT INTO icon_progress (icon, last_seq, queue_id)"
            " VALUES (%(icon)s, %(top)s, %(queue)s)"
            " ON CONFLICT (icon) DO UPDATE SET last_seq = EXCLUDED.last_seq,"
            " queue_id = EXCLUDED.queue_id",
            {
                "icon": self.name,
                "top": top,
                "queue": self.queue.identity,
                "events": json.dumps(
                    [
                        {
                            "id": e.body["id"],
                            "site": e.body["site"],
                            "ts": e.body["ts"],
                            "payload": e.body["payload"],
                            "seq": e.seq,
                        }
                        for e in events
                    ]
                ),
                "beats": json.dumps(
                    [
                        {"ts": b.body["ts"], "since": b.body.get("since"), "seq": b.seq}
                        for b in beats
                    ]
                ),
                "sessions": json.dumps(
                    [
                        {"id": x.body["id"], "event": x.body["event"], "ts": x.ts, "seq": x.seq}
                        for x in sessions
                    ]
                ),
            },
        )
        self.last_seq = top
        self.queue.delete_through(top)
        self.written += len(events)

    def _maybe_heartbeat(self) -> None:
        now = self.clock.now()
        if now < self.next_heartbeat:
            return
        value, since = self.watermark, self.since
        if value is None or since is None:
            value = since = now  # no source talks to it: it vouches for this instant only
        self.queue.append([("heartbeat", now, {"ts": value, "since": since})])
        if self.virtual is not None:
            self.next_heartbeat = next_on_grid(now, self.heartbeat_interval)
        else:
            self.next_heartbeat = now + self.heartbeat_interval

    def report_status(self) -> None:
        """On a thread of its own: the writer may be stuck for seconds on a dead WAN."""
        while True:
            self._write_status()
            time.sleep(STATUS_EVERY_S)

    def _write_status(self) -> None:
        write_status(
            self.config["status"],
            {
                "name": self.name,
                "queue_depth": self.queue.depth(),
                "queued_events": self.queue.depth("event"),
                "oldest_queued_ts": self.queue.oldest_event_ts(),
                "written": self.written,
                "last_seq": self.last_seq,
                "idb_connected": self.idb_connected,
                "source_connected": self.watermark is not None,
                "scenario_time": self.clock.now(),
            },
        )


def _parse_event(line: bytes) -> dict[str, Any]:
    event = json.loads(line)
    return {
        "id": event["id"],
        "site": event["site"],
        "ts": event["ts"],
        "payload": event["payload"],
    }


def main() -> None:
    exit_on_sigterm()
    config = load_config()
    clock = run_clock(config["name"], "icon")
    try:
        icon = Icon(config, clock)
    except TestbedError as exc:
        print(f"error: {config['name']}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Loopback on one host; every address inside a container, where sources dial it by name.
    host = config.get("listen_host", "127.0.0.1")
    listener = socket.create_server((host, int(config["port"])), reuse_port=False)
    threading.Thread(target=icon.serve_intake, args=(listener,), daemon=True).start()
    if icon.virtual is None:  # on the virtual clock the writer reports as it parks
        threading.Thread(target=icon.report_status, daemon=True).start()
    icon.log.info(
        "accepting events on %s:%s, writing to %s/%s",
        host,
        config["port"],
        config["idb"],
        config["database"],
    )
    if icon.virtual is not None:
        # Ready before the first call to the IDB: that call may wait for a deadline the
        # clock reaches only once the step that started this ICON is over.
        icon._write_status()
    icon.run_writer()


if __name__ == "__main__":
    main()
