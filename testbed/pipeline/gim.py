"""GIM: extracts every IDB database, merges the two copies of each HA pair, and loads facts
into the Info Mart, transforming only as far as every site's data is complete.

Extraction is incremental and snapshot-safe. Every IDB row carries the id of the
transaction that wrote it. In a repeatable-read snapshot, `pg_snapshot_xmin` is the oldest
transaction still running: everything below it has committed (or never will). A cycle takes
the rows with high-water mark <= txid < xmin and moves the mark to xmin, so a row whose
transaction commits late (after a later one) is taken by a later cycle, never skipped.

One Info Mart transaction per cycle does everything: new high-water marks, site state,
merge, discards and the transform. A crash at any point loses or doubles nothing; and since
the whole state lives in the Info Mart, a GIM started at the other site after a promotion
continues from the replicated state.

- A site's data is complete as far as its members' heartbeats vouch for it, each only from
  its own vouching start on (DESIGN.md section 1: a member that missed calls proves
  completeness only from when it caught up; the gap is covered by its partner). The
  completeness moves to the newest heartbeat of a member that vouches from at or before
  it. When every member has been heard vouching only from later on, no member holds what
  lies between: it moves to the earliest of those starts (see `advance_completeness`).
- The transform boundary is the smallest completeness over the sites that are not stuck.
- A site is stuck while its completeness lags scenario time by more than
  `extract_data_stuck_threshold`; GIM goes on without it. When it comes back (the lag falls
  within the threshold again) at time R, its events older than R - threshold are discarded
  (recorded and counted, not loaded); newer late events are loaded.
- Merging: each event once, from whichever IDB had it first (member a's copy when both
  arrive together). Facts have no unique key on the event: a merge bug would show as a
  duplicate to the checkers, not be hidden by the database.
- A source with no new data for `delayed_data_threshold` gets a warning, nothing more.
- A *retired* site (`retired_sites`: a site lost in a disaster, whose calls moved to the
  survivors) is still extracted from the copies on surviving IDBs, but it no longer gates
  the transform boundary and is never declared stuck: it will never send data again.
  Should it be recovered (no longer retired), it is waited for again from then on: its
  lag runs from its recovery, and what its old disks still held arrives as late data.

Run as `python -m testbed.pipeline.gim CONFIG.json`, with the run's clock in the environment.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from testbed.clock import Clock, format_duration
from testbed.periods import (
    CONNECT_TIMEOUT_S,
    GIM_CYCLE_S,
    next_on_grid,
)
from testbed.pipeline.component import (
    call,
    connect,
    exit_on_sigterm,
    load_config,
    run_clock,
    setup_logging,
    write_status,
)
from testbed.pipeline.schema import INFOMART_DDL
from testbed.vclock.participant import VirtualClock

CYCLE_S = GIM_CYCLE_S  # wall seconds between cycles at most
BACKOFF_CAP_S = 0.2  # reconnecting to the Info Mart (GIM out of service: a delay only)
INF = float("inf")
GAP_WALL_S = 0.1  # a cycle this long after the last good one resumes service after a gap
FREEZE_WALL_S = 0.5  # a cycle this long since it began was frozen or stalled


@dataclass
class Extracted:
    source: str
    new_hwm: int
    events: list[tuple[str, str, float, str]]
    heartbeat: float | None
    read_at: float = 0.0  # scenario time of the snapshot: when the source could be read
    # (since, newest heartbeat) per vouching start among the heartbeats read
    spans: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Failed:
    source: str
    error: str
    failed_at: float = 0.0  # scenario time the failing attempt began
    timed_out: bool = False  # it ran out of its own connect timeout


@dataclass
class Source:
    name: str
    site: str
    member: str
    address: str
    database: str
    server: str = ""  # the IDB's name, and the WAN route to it ("site1|site2"; None: local)
    route: str | None = None
    via: str | None = None  # the WAN proxy on that route
    requests: Any = field(default_factory=queue.Queue)  # a Mailbox on the virtual clock
    busy: bool = False
    reachable: bool = False
    answered_at: float | None = None  # when the newest answer GIM has applied was obtained
    pending_at: float | None = None  # when an answer in the cycle being applied was obtained


# An extraction is one statement, so one snapshot: the rows committed below its xmin and
# at or above the high-water mark, the newest heartbeat among them, and the xmin itself
# (the next mark), in one round trip (a cycle makes one per source, every heartbeat).
# The row with no event id carries the xmin and the heartbeat.
EXTRACT_SQL = (
    "WITH snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)"
    " SELECT NULL::text, NULL::text, NULL::float8, NULL::text, snap.xmin::text,"
    "  (SELECT max(h.ts) FROM heartbeats h"
    "   WHERE h.txid >= %(hwm)s::xid8 AND h.txid < snap.xmin),"
    "  (SELECT json_agg(json_build_array(v.since, v.ts)) FROM"
    "   (SELECT h.since, max(h.ts) AS ts FROM heartbeats h"
    "    WHERE h.txid >= %(hwm)s::xid8 AND h.txid < snap.xmin GROUP BY h.since) v)"
    " FROM snap"
    " UNION ALL"
    " SELECT e.event_id, e.site, e.ts, e.payload, NULL, NULL, NULL::json FROM events e, snap"
    " WHERE e.txid >= %(hwm)s::xid8 AND e.txid < snap.xmin"
)


class Extractor(threading.Thread):
    """One source's reads: each request (a high-water mark) gets one answer."""

    def __init__(
        self,
        source: Source,
        results: Any,
        app: str,
        clock: Clock | VirtualClock | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"extract-{source.name}")
        self.clock = clock
        self.virtual = clock if isinstance(clock, VirtualClock) else None
        self.source = source
        self.results = results
        self.app = app
        self.conn: psycopg.Connection | None = None
        self.began = 0.0  # scenario time the current attempt began

    def start(self) -> None:
        if self.virtual is not None:
            self.virtual.spawn(self.run_paced, self.name)
        else:
            super().start()

    def run_paced(self) -> None:
        """On the virtual clock: one answer per request, at once; the GIM asks once a
        cycle, so a failed source is retried a cycle later."""
        while True:
            hwm = self.source.requests.get()
            self.results.put(self._attempt(hwm))

    def run(self) -> None:
        while True:
            hwm = self.source.requests.get()
            attempt = time.monotonic()
            result = self._attempt(hwm)
            if isinstance(result, Failed) and self._cut_while_hung(attempt, result):
                # A heal closes what a black hole held: that is news, so try again at once
                # rather than a cycle later (at 1h = 1s every 10 ms is 36 scenario seconds).
                result = self._attempt(hwm)
            self.results.put(result)
            if isinstance(result, Failed):
                # A refused connection fails at once: pause before the next attempt.
                time.sleep(max(0.0, CYCLE_S - (time.monotonic() - attempt)))

    def _attempt(self, hwm: int) -> Extracted | Failed:
        try:
            return self.extract_anew(hwm)
        except (psycopg.Error, OSError) as exc:
            # Dated when the failing attempt began: one begun before a freeze and failed
            # after it says nothing of the source since.
            return Failed(
                self.source.name,
                str(exc).strip()[:200],
                self.began,
                timed_out=isinstance(exc, psycopg.errors.ConnectionTimeout),
            )

    @staticmethod
    def _cut_while_hung(attempt: float, failed: Failed) -> bool:
        """Whether an attempt hung (a black-holed link) and was then cut before its own
        deadline: the link changed under it."""
        hung = time.monotonic() - attempt
        return not failed.timed_out and CYCLE_S <= hung < CONNECT_TIMEOUT_S

    def _now(self) -> float:
        """Scenario time (0 for an extractor used without a clock, as tests do)."""
        return self.clock.now() if self.clock is not None else 0.0

    def extract_anew(self, hwm: int) -> Extracted:
        """An extraction; if the connection it used was broken (cut by a WAN fault, ended
        by the server while this process was frozen), once more on a new one: a broken
        old connection says nothing of whether the source is reachable now."""
        reused = self.conn is not None
        try:
            return self.extract(hwm)
        except (psycopg.Error, OSError):
            self._drop()
            if not reused:
                raise
        try:
            return self.extract(hwm)
        except (psycopg.Error, OSError):
            self._drop()
            raise

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def extract(self, hwm: int) -> Extracted:
        self.began = self._now()
        target = self.source.server or self.source.address
        if self.conn is None:
            self.conn = connect(
                self.source.address,
                self.source.database,
                self.app,
                self.clock,
                target,
                self.source.route,
                self.source.via,
            )
            self.conn.autocommit = True  # one statement, one snapshot: see EXTRACT_SQL
        conn = self.conn
        with call(self.clock or Clock(0.0), conn, target, self.source.route, self.source.via):
            try:
                # Read before the snapshot is taken: a thread frozen in between must not date
                # what it read before the freeze as news after it.
                read_at = self._now()
                rows = conn.execute(EXTRACT_SQL, {"hwm": str(hwm)}).fetchall()
            except psycopg.errors.UndefinedTable:  # ICON has not created its tables yet
                return Extracted(self.source.name, hwm, [], None, self._now())
        xmin, heartbeat, spans = next((r[4], r[5], r[6]) for r in rows if r[0] is None)
        events = [r[:4] for r in rows if r[0] is not None]
        return Extracted(
            self.source.name,
            max(hwm, int(xmin)),
            events,
            heartbeat,
            read_at,
            [(-INF if since is None else float(since), float(to)) for since, to in spans or []],
        )


def merge_spans(
    known: list[tuple[float, float]], heard: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """A member's vouched spans (since, to) with what a new extraction heard, one per
    vouching start, the newest heartbeat of each. A heartbeat that vouches only for its
    own instant (no source session open) says only "heard anew from here": of a run of
    them, the first and the newest are kept (the jump over a hole needs no other)."""
    spans = dict(known)
    for since, to in heard:
        spans[since] = max(spans.get(since, to), to)
    kept: list[tuple[float, float]] = []
    for since, to in sorted(spans.items()):
        if since == to and len(kept) >= 2 and all(a == b for a, b in kept[-2:]):
            kept[-1] = (since, to)  # a run of them: its first and its newest
            continue
        kept.append((since, to))
    return kept


def advance_completeness(
    complete: float | None, members: list[list[tuple[float, float]]]
) -> float | None:
    """A site's completeness given what each member's heartbeats vouch for (DESIGN.md
    section 1). It moves to the newest heartbeat of a member vouching from at or before it.
    When every member has vouched from later only, what lies between is held by none of
    them (each missed it): it moves to the earliest such start, and on from there. A member
    not heard from since (its IDB out of reach, or it is down) may hold it: it waits."""
    spans = [sp for member in members for sp in member]
    if not spans:
        return complete
    if complete is None:  # first heard: from the earliest start any member vouches from
        complete = min(since for since, _ in spans)
    while True:
        reach = [to for since, to in spans if since <= complete < to]
        if reach:
            complete = max(reach)
            continue
        later = [min((a for a, _ in member if a > complete), default=None) for member in members]
        if members and all(a is not None for a in later):
            complete = min(a for a in later if a is not None)
            continue
        return complete


def _spans_json(spans: list[tuple[float, float]]) -> str:
    return json.dumps([[None if a == -INF else a, b] for a, b in spans])


class Gim:
    """On the virtual clock a cycle falls on every multiple of the heartbeat interval: the
    GIM asks every source, collects the answers that come at that instant (a source the
    faults block answers at its deadline, for a later cycle), and applies them. A cycle
    that starts later than its instant (the GIM was frozen, or its Info Mart was) resumes
    service after a gap, as a wall-time stall does on the realtime clock."""

    def __init__(self, config: dict[str, Any], clock: Clock | VirtualClock) -> None:
        self.config = config
        self.clock = clock
        self.virtual = clock if isinstance(clock, VirtualClock) else None
        self.period = float(config.get("heartbeat_interval", 60.0))
        self.infomart_name = str(config.get("infomart_name", config["infomart"]))
        self.infomart_route: str | None = config.get("infomart_route")
        self.infomart_via: str | None = config.get("infomart_via")
        self.name = config["name"]
        self.log = setup_logging(self.name, config["site"], clock)
        self.threshold = float(config["extract_data_stuck_threshold"])
        self.delayed = float(config["delayed_data_threshold"])
        self.sources = {s["name"]: Source(**s) for s in config["sources"]}
        if self.virtual is not None:
            for source in self.sources.values():
                source.requests = self.virtual.mailbox()
        self.sites = sorted({s.site for s in self.sources.values()})
        self.retired = set(config.get("retired_sites", []))
        self.results: Any = self.virtual.mailbox() if self.virtual is not None else queue.Queue()
        self.hwm: dict[str, int] = {}
        self.coverage: dict[str, list[tuple[float, float]]] = {}  # per source, as committed
        self.warned: set[str] = set()
        self.conn: psycopg.Connection | None = None
        self.figures: dict[str, Any] = {}
        self.started = clock.now()  # a site never heard from lags from here
        # Sites are judged only on what GIM learnt while in service: after a gap (started,
        # frozen, Info Mart down), every source must answer again first.
        self.serving_since = float("inf")
        self.last_good_cycle: float | None = None  # monotonic
        for source in self.sources.values():
            Extractor(source, self.results, self.name, clock).start()

    # --- the Info Mart -----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        conn = connect(
            self.config["infomart"],
            self.config["database"],
            self.name,
            self.clock,
            self.infomart_name,
            self.infomart_route,
            self.infomart_via,
        )
        conn.autocommit = True  # every change below is inside an explicit transaction
        now = self.clock.now()
        with (
            call(self.clock, conn, self.infomart_name, self.infomart_route, self.infomart_via),
            conn.transaction(),
        ):
            conn.execute(INFOMART_DDL)
            for s in self.sources.values():
                conn.execute(
                    "INSERT INTO gim_source (source, site) VALUES (%s, %s)"
                    " ON CONFLICT (source) DO NOTHING",
                    (s.name, s.site),
                )
            for site in self.sites:
                conn.execute(
                    "INSERT INTO gim_site (site, stuck_since) VALUES (%s, NULL)"
                    " ON CONFLICT (site) DO NOTHING",
                    (site,),
                )
            conn.execute(
                "INSERT INTO gim_state (id, updated_ts) VALUES (1, %s) ON CONFLICT DO NOTHING",
                (now,),
            )
            # A site retired before and no longer (recovered) is waited for again from
            # now: its lag runs from here, not from what it sent before its loss.
            conn.execute(
                "UPDATE gim_site SET retired = false, waited_from = %s"
                " WHERE retired AND NOT (site = ANY(%s))",
                (now, sorted(self.retired)),
            )
            conn.execute(
                "UPDATE gim_site SET retired = true WHERE site = ANY(%s)", (sorted(self.retired),)
            )
            rows = conn.execute("SELECT source, hwm, coverage FROM gim_source").fetchall()
            self.hwm = {source: hwm for source, hwm, _ in rows}
            self.coverage = {
                source: [(-INF if a is None else a, b) for a, b in json.loads(spans)]
                for source, _, spans in rows
            }
        self.log.info(
            "Info Mart connected at %s; high-water marks %s", self.config["infomart"], self.hwm
        )
        return conn

    def run_paced(self, virtual: VirtualClock) -> None:
        """The cycle on the virtual clock (see the class's docstring)."""
        last_cycle: float | None = None  # scenario time of the last cycle applied
        # Ready before the first call to the Info Mart: that call may wait for a deadline
        # the clock reaches only once the step that started this GIM is over.
        self._status()
        while True:
            if self.conn is None:
                try:
                    self.conn = self._connect()
                except (psycopg.Error, OSError) as exc:
                    self.log.warning("Info Mart unreachable: %s", str(exc).strip()[:200])
                    self._status()
                    virtual.sleep_until(next_on_grid(virtual.now(), self.period))  # next cycle
                    continue
            began = virtual.now()
            if last_cycle is None or began - last_cycle > self.period:
                self.serving_since = began  # back in service after a gap
            asked: set[str] = set()
            for source in self.sources.values():
                if not source.busy:
                    source.busy = True
                    source.requests.put(self.hwm[source.name])
                    asked.add(source.name)
            results = self._collect_paced(virtual, asked)
            try:
                with call(
                    virtual, self.conn, self.infomart_name, self.infomart_route, self.infomart_via
                ):
                    self._apply(results, virtual.now())
                last_cycle = began
                for source in self.sources.values():
                    if source.pending_at is not None:
                        source.answered_at = source.pending_at
                    source.pending_at = None
            except (psycopg.Error, OSError) as exc:
                for source in self.sources.values():
                    source.pending_at = None
                self.log.warning("cycle failed, will redo it: %s", str(exc).strip()[:200])
                self.conn.close()
                self.conn = None
            if virtual.now() - began > self.period:
                self.serving_since = virtual.now()  # stalled inside the cycle: hear all anew
            self._status()
            virtual.sleep_until(next_on_grid(virtual.now(), self.period))

    def _collect_paced(self, virtual: VirtualClock, asked: set[str]) -> list[Extracted]:
        """The answers of this cycle: every source asked, or those in once the run is
        quiescent at this instant (the rest are blocked: they answer at their deadline). A late
        answer to an earlier cycle (a source that was blocked past its deadline) is taken
        too, but it is not one of this cycle's: counting it as one left a fresh answer
        waiting a cycle, and what GIM knew a cycle late (found by `testbed fuzz`)."""
        # What came in since the last cycle first, asked or not: when every source is still
        # busy with an earlier request (black-holed or frozen), none is asked, and a late
        # answer left in the mailbox kept its source busy for ever (found by testbed fuzz).
        got: list[Any] = self.results.drain()
        waiting = set(asked) - {result.source for result in got}
        while waiting:
            result = self.results.get(settled=True)
            if result is None:
                break
            got.append(result)
            waiting.discard(result.source)
        return self._take(got)

    def run(self) -> None:
        if self.virtual is not None:
            self.run_paced(self.virtual)
            return
        backoff = 0.02
        while True:
            started = time.monotonic()
            if self.conn is None:
                try:
                    self.conn = self._connect()
                    backoff = 0.02
                except (psycopg.Error, OSError) as exc:
                    self.log.warning("Info Mart unreachable: %s", str(exc).strip()[:200])
                    self._status()  # up, out of service: a delay, not a fault
                    time.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP_S)
                    continue
            if self.last_good_cycle is None or started - self.last_good_cycle > GAP_WALL_S:
                self.serving_since = self.clock.now()
            for source in self.sources.values():
                if not source.busy:
                    source.busy = True
                    source.requests.put(self.hwm[source.name])
            results = self._collect()
            try:
                now = self.clock.now()
                if time.monotonic() - started > FREEZE_WALL_S:
                    # Frozen (or stalled) since the cycle began: what it collected is from
                    # before; judge nothing until every source has answered anew.
                    self.serving_since = self.clock.now()
                with call(
                    self.clock,
                    self.conn,
                    self.infomart_name,
                    self.infomart_route,
                    self.infomart_via,
                ):
                    self._apply(results, now)
                self.last_good_cycle = time.monotonic()
                for source in self.sources.values():
                    if source.pending_at is not None:
                        source.answered_at = source.pending_at
                    source.pending_at = None
            except (psycopg.Error, OSError) as exc:
                for source in self.sources.values():
                    source.pending_at = None  # what they said was not applied: ask again
                self.log.warning("cycle failed, will redo it: %s", str(exc).strip()[:200])
                self.conn.close()
                self.conn = None  # reconnecting reloads the marks: nothing half-applied
            if time.monotonic() - started > FREEZE_WALL_S:
                # Frozen or stalled inside the cycle (its Info Mart frozen mid-transaction,
                # the process stopped mid-apply): the answers still queued are from before,
                # and the next cycle's clock from after. Hear every source anew first.
                self.serving_since = self.clock.now()
            self._status()
            time.sleep(max(0.0, CYCLE_S / 2 - (time.monotonic() - started)))

    def _collect(self) -> list[Extracted]:
        got: list[Any] = []
        try:
            got.append(self.results.get(timeout=CYCLE_S))
            while True:
                got.append(self.results.get_nowait())
        except queue.Empty:
            pass
        return self._take(got)

    def _take(self, got: list[Any]) -> list[Extracted]:
        """The answers collected: each source's reachability, and what it extracted."""
        ok = []
        for result in got:
            source = self.sources[result.source]
            source.busy = False
            # When the answer was obtained (a frozen GIM's extractors were frozen too: what
            # they read after waking is news); counts once the cycle applying it commits.
            source.pending_at = result.failed_at if isinstance(result, Failed) else result.read_at
            if isinstance(result, Failed):
                if source.reachable:
                    self.log.warning("source %s unreachable: %s", source.name, result.error)
                source.reachable = False
            else:
                if not source.reachable:
                    self.log.info("source %s reachable", source.name)
                source.reachable = True
                ok.append(result)
        return ok

    def _apply(self, results: list[Extracted], now: float) -> None:
        conn = self.conn
        assert conn is not None
        # Pipelined: a statement whose result nothing reads goes out without waiting for the
        # one before to answer, so a cycle costs the round trips of what it reads, not one
        # per statement (each a few hundred microseconds on a busy machine, every heartbeat).
        with conn.pipeline(), conn.transaction():
            # The three reads go out together: one round trip.
            site_rows = conn.execute(
                "SELECT site, complete_to, stuck, discard_before, returned_at, waited_from"
                " FROM gim_site"
                " FOR UPDATE"
            )
            state_row = conn.execute(
                "SELECT transform_boundary FROM gim_state WHERE id = 1 FOR UPDATE"
            )
            source_rows = conn.execute("SELECT source, last_data_ts FROM gim_source")
            sites = {
                row[0]: {
                    "complete_to": row[1],
                    "stuck": row[2],
                    "discard_before": row[3],
                    "returned_at": row[4],
                    "waited_from": row[5],
                }
                for row in site_rows
            }
            state = state_row.fetchone()
            if state is None:
                raise psycopg.DataError("no row in gim_state")
            boundary = state[0]
            last_data: dict[str, float | None] = dict(source_rows.fetchall())
            coverage = {name: merge_spans(self.coverage.get(name, []), []) for name in self.sources}
            for result in results:
                coverage[result.source] = merge_spans(coverage[result.source], result.spans)
            # The marks move on in every cycle, so the heartbeats they pass over must count
            # in every cycle too, judged or not: else a site's completeness stays where it
            # was before a gap while the rows that advanced it are never read again.
            was = {name: site["complete_to"] for name, site in sites.items()}
            for name, site in sites.items():
                members = [coverage[s.name] for s in self.sources.values() if s.site == name]
                site["complete_to"] = advance_completeness(site["complete_to"], members)
            for source in self.sources.values():
                complete = sites[source.site]["complete_to"]
                if complete is not None:
                    coverage[source.name] = [sp for sp in coverage[source.name] if sp[1] > complete]
            self._record_sources(conn, results, coverage, last_data, now)
            moved = [
                {"site": name, "complete_to": site["complete_to"]}
                for name, site in sites.items()
                if site["complete_to"] != was[name]
            ]
            if moved:
                conn.execute(
                    "UPDATE gim_site g SET complete_to = u.complete_to"
                    " FROM json_to_recordset(%s::json) AS u(site text, complete_to float8)"
                    " WHERE g.site = u.site",
                    (json.dumps(moved),),
                )
            # A GIM back in service (started, resumed, its Info Mart back) first hears every
            # source anew: otherwise it would find every site "stuck" on what it knew before.
            primed = all(self._fresh(s) for s in self.sources.values())
            # site -> when it could first be read again: rows of a member that holds all
            # since the site's completeness (its extraction advanced, whatever the age of
            # what it brings), or any that moved the completeness. What a member vouching
            # only from later brings waits, staged, like the rest of a stuck site's rows.
            advanced: dict[str, float] = {}
            for r in results:
                site_name = self.sources[r.source].site
                complete = was[site_name]
                known = coverage[r.source]
                counts = not known or complete is None or min(a for a, _ in known) <= complete
                if (r.events or r.spans) and (
                    counts or sites[site_name]["complete_to"] != complete
                ):
                    advanced[site_name] = min(advanced.get(site_name, r.read_at), r.read_at)
            returned = self._site_transitions(conn, sites, now, advanced) if primed else False
            if any(r.events for r in results):
                self._merge(conn, results, now)
            if returned:
                self._discard_staged(conn, now)
            candidates = [
                s["complete_to"]
                for name, s in sites.items()
                if not s["stuck"] and name not in self.retired and name in self.sites
            ]
            if candidates and None not in candidates:
                target = min(candidates)
                if boundary is None or target > boundary:
                    boundary = target
                    # A stuck site's late rows wait in staging until its return is judged:
                    # only then is it known which of them the threshold rule discards.
                    held = [name for name, s in sites.items() if s["stuck"]]
                    conn.execute(
                        "WITH moved AS (DELETE FROM staging WHERE ts <= %s"
                        " AND NOT (site = ANY(%s)) RETURNING *)"
                        " INSERT INTO fact_interaction (event_id, site, ts, payload, source,"
                        " loaded_ts) SELECT event_id, site, ts, payload, source, %s FROM moved"
                        " ORDER BY ts, event_id",
                        (boundary, held, now),
                    )
            conn.execute(
                "UPDATE gim_state SET transform_boundary = %s, cycles = cycles + 1,"
                " updated_ts = %s WHERE id = 1",
                (boundary, now),
            )
            self._warn_delayed(last_data, now)
        for result in results:
            self.hwm[result.source] = result.new_hwm
        self.coverage = coverage
        self.figures = {"transform_boundary": boundary, "sites": sites}

    def _fresh(self, source: Source) -> bool:
        """Heard from since service resumed: rows, or a failure (a source behind a
        black-holed WAN fails once its connection or statement deadline passes, see
        `periods.PRIMING_WALL_S`; a slow one is still answering, and must not be taken for
        a lagging one)."""
        heard = max(t for t in (source.answered_at, source.pending_at, -INF) if t is not None)
        return heard >= self.serving_since

    def _site_transitions(
        self,
        conn: psycopg.Connection,
        sites: dict,
        now: float,
        advanced: dict[str, float],
    ) -> bool:
        """Stuck: no progress for longer than the threshold. Back: the moment its
        extraction advances again (the reconnection time of the rule), whatever the age
        of what arrives; what is older than that time minus the threshold is discarded."""
        returned = False
        for name, site in sites.items():
            if name in self.retired and site["stuck"]:
                # Retired: no longer waited for, so no longer stuck either (it will never
                # send again); what it staged goes on, as the procedure releases it.
                site["stuck"] = False
                self.log.warning("site %s is retired: no longer stuck", name)
                conn.execute("UPDATE gim_site SET stuck = false WHERE site = %s", (name,))
                continue
            since = site["complete_to"] if site["complete_to"] is not None else self.started
            for floor in (site["returned_at"], site["waited_from"]):
                if floor is not None:
                    since = max(since, floor)
            lag = now - since
            judged = name not in self.retired and name in self.sites
            if judged and not site["stuck"] and lag > self.threshold:
                site["stuck"] = True
                self.log.warning(
                    "site %s is stuck: no data for %s (threshold %s); going on without it",
                    name,
                    format_duration(lag),
                    format_duration(self.threshold),
                )
                conn.execute(
                    "UPDATE gim_site SET stuck = true, stuck_since = %s, lag_from = %s"
                    " WHERE site = %s",
                    (now, site["complete_to"], name),
                )
            elif judged and site["stuck"] and (name in advanced or lag <= self.threshold):
                site["stuck"] = False
                # The reconnection time: when its source could be read again (the snapshot
                # of the extraction that brought its first rows back), not when the rows
                # were applied, which may be later for a long backlog.
                site["returned_at"] = min(advanced.get(name, now), now)
                cut = site["returned_at"] - self.threshold
                if site["discard_before"] is None or cut > site["discard_before"]:
                    site["discard_before"] = cut
                returned = True
                self.log.warning(
                    "site %s is back; its events before t=%.0fs are discarded",
                    name,
                    site["discard_before"],
                )
                conn.execute(
                    "UPDATE gim_site SET stuck = false, returned_at = %s,"
                    " discard_before = %s WHERE site = %s",
                    (site["returned_at"], site["discard_before"], name),
                )
        return returned

    def _record_sources(
        self,
        conn: psycopg.Connection,
        results: list[Extracted],
        coverage: dict[str, list[tuple[float, float]]],
        last_data: dict[str, float | None],
        now: float,
    ) -> None:
        """Each answering source's new mark, rows, freshness and coverage, in one statement;
        `last_data` follows, as the table now says."""
        rows: dict[str, dict[str, Any]] = {}
        for result in results:  # in order: a source's later answer has the last word
            row = rows.setdefault(result.source, {"source": result.source, "rows": 0})
            row["hwm"] = result.new_hwm
            row["rows"] += len(result.events)
            row["fresh"] = (
                row.get("fresh", False) or bool(result.events) or (result.heartbeat is not None)
            )
            row["coverage"] = _spans_json(coverage[result.source])
            last = last_data.get(result.source)
            last_data[result.source] = now if row["fresh"] or last is None else last
        if not rows:
            return
        conn.execute(
            "UPDATE gim_source g SET hwm = u.hwm, rows_extracted = g.rows_extracted + u.rows,"
            " last_data_ts = CASE WHEN u.fresh THEN %(now)s"
            " ELSE coalesce(g.last_data_ts, %(now)s) END, coverage = u.coverage"
            " FROM json_to_recordset(%(rows)s::json)"
            " AS u(source text, hwm bigint, rows bigint, fresh boolean, coverage text)"
            " WHERE g.source = u.source",
            {"now": now, "rows": json.dumps(list(rows.values()))},
        )

    def _merge(self, conn: psycopg.Connection, results: list[Extracted], now: float) -> None:
        """The rows extracted, each event once (member a's copy first): new ones are staged,
        or discarded if older than their site's discard line. One statement, whose result
        nothing reads: it costs the cycle no round trip (see `_apply`)."""
        batch = [
            {"id": event_id, "site": site, "ts": ts, "payload": payload, "src": r.source, "pref": p}
            for r in results
            for p in [0 if self.sources[r.source].member == "a" else 1]
            for event_id, site, ts, payload in r.events
        ]
        conn.execute(
            "WITH new AS (SELECT DISTINCT ON (b.id) b.id, b.site, b.ts, b.payload, b.src,"
            "  s.discard_before IS NOT NULL AND b.ts < s.discard_before AS late"
            "  FROM json_to_recordset(%(batch)s::json)"
            "  AS b(id text, site text, ts float8, payload text, src text, pref int)"
            "  JOIN gim_site s ON s.site = b.site"
            "  WHERE NOT EXISTS (SELECT 1 FROM staging x WHERE x.event_id = b.id)"
            "  AND NOT EXISTS (SELECT 1 FROM fact_interaction f WHERE f.event_id = b.id)"
            "  AND NOT EXISTS (SELECT 1 FROM gim_discard d WHERE d.event_id = b.id)"
            "  ORDER BY b.id, b.pref),"
            " gone AS (INSERT INTO gim_discard (event_id, site, ts, source, discarded_ts)"
            "  SELECT id, site, ts, src, %(now)s FROM new WHERE late RETURNING site),"
            " kept AS (INSERT INTO staging (event_id, site, ts, payload, source)"
            "  SELECT id, site, ts, payload, src FROM new WHERE NOT late)"
            " UPDATE gim_site g SET discarded = g.discarded + c.n"
            " FROM (SELECT site, count(*) AS n FROM gone GROUP BY site) c WHERE g.site = c.site",
            {"batch": json.dumps(batch), "now": now},
        )

    def _discard_staged(self, conn: psycopg.Connection, now: float) -> None:
        """A site just came back: what it had staged from before the cut is discarded too,
        but only from where it began to lag. What it had staged before then came in time:
        it waited only for the transform boundary (another site lagging), and the outage
        window of the rule does not reach back before the site's completeness."""
        conn.execute(
            "WITH gone AS (DELETE FROM staging x USING gim_site s WHERE x.site = s.site"
            " AND s.discard_before IS NOT NULL AND x.ts < s.discard_before"
            " AND (s.lag_from IS NULL OR x.ts >= s.lag_from) RETURNING x.*),"
            " kept AS (INSERT INTO gim_discard (event_id, site, ts, source, discarded_ts)"
            " SELECT event_id, site, ts, source, %s FROM gone RETURNING site)"
            " UPDATE gim_site g SET discarded = g.discarded + c.n"
            " FROM (SELECT site, count(*) AS n FROM kept GROUP BY site) c WHERE g.site = c.site",
            (now,),
        )

    def _warn_delayed(self, last_data: dict[str, float | None], now: float) -> None:
        for source, last in last_data.items():
            if last is None or now - last <= self.delayed:
                self.warned.discard(source)
            elif source not in self.warned:
                self.warned.add(source)
                self.log.warning(
                    "source %s has had no new data for %s (delayed-data-threshold %s)",
                    source,
                    format_duration(now - last),
                    format_duration(self.delayed),
                )

    def _status(self) -> None:
        sites = self.figures.get("sites", {})
        write_status(
            self.config["status"],
            {
                "name": self.name,
                "scenario_time": self.clock.now(),
                "transform_boundary": self.figures.get("transform_boundary"),
                "hwm": self.hwm,
                "reachable": {s.name: s.reachable for s in self.sources.values()},
                "stuck_sites": sorted(n for n, s in sites.items() if s["stuck"]),
                "complete_to": {n: s["complete_to"] for n, s in sites.items()},
                "delayed_sources": sorted(self.warned),
            },
        )


def main() -> None:
    exit_on_sigterm()
    config = load_config()
    Gim(config, run_clock(config["name"], "gim")).run()


if __name__ == "__main__":
    main()
