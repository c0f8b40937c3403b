"""Is a standby Info Mart the same as its primary? Have two Info Marts split apart?

Both questions are asked of live servers at the end of a run (or inside an operator
procedure) and answered as plain data for `final.json`, so the checkers judge from the
folder alone.

- `compare`: the standby must have replayed the primary's flush LSN (the pin); then every
  Info Mart table, facts and GIM's state alike, is checksummed on both. Callers stop the
  writers first, or the primary moves past the pin while the sums are taken.
- `divergence`: two Info Marts that are both primaries, one promoted while the other still
  ran (split brain). Their tables differ (fact rows, or at least what each GIM wrote of its
  own state: two GIMs may load the same facts in the same order), and the promoted one's
  timeline forked
  from the other's WAL at an LSN the other has written past: neither can stream from the
  other again without rewinding one of them, which throws away what it loaded on its own.
"""

from __future__ import annotations

from typing import Any

import psycopg

from testbed.deployment import Deployment
from testbed.digests import EVENTS_DIGEST_SQL
from testbed.errors import TestbedError
from testbed.postgres import Server, format_lsn, parse_lsn
from testbed.topology import INFOMART_DATABASE, extraction_source

# Table -> the key its rows are ordered by; together, everything GIM writes.
TABLES = {
    "fact_interaction": "interaction_key",
    "staging": "event_id",
    "gim_discard": "event_id",
    "gim_source": "source",
    "gim_site": "site",
    "gim_state": "id",
}
SHOWN = 5  # differing rows listed per table and side


def _sums(server: Server) -> dict[str, list]:
    sums = {}
    for table, key in TABLES.items():
        row = server.execute(
            f"SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {key})), '')"
            f" FROM {table} t",
            dbname=INFOMART_DATABASE,
        )[0]
        sums[table] = [int(row[0]), row[1]]
    return sums


def _rows(server: Server, table: str) -> list[str]:
    key = TABLES[table]
    return [
        r[0]
        for r in server.execute(
            f"SELECT t::text FROM {table} t ORDER BY {key}", dbname=INFOMART_DATABASE
        )
    ]


def table_differences(a: Server, b: Server, table: str) -> dict[str, Any]:
    rows_a, rows_b = _rows(a, table), _rows(b, table)
    set_a, set_b = set(rows_a), set(rows_b)
    only_a = [r for r in rows_a if r not in set_b]
    only_b = [r for r in rows_b if r not in set_a]
    return {
        f"only_in_{a.name}": len(only_a),
        f"only_in_{b.name}": len(only_b),
        "first": {a.name: only_a[:SHOWN], b.name: only_b[:SHOWN]},
    }


def compare(primary: Server, standby: Server, timeout: float = 30.0) -> dict[str, Any]:
    """The standby against its primary at the primary's flush LSN, table by table."""
    result: dict[str, Any] = {"primary": primary.name, "standby": standby.name}
    try:
        pin = primary.lsn("flush")
        result["lsn"] = format_lsn(
            primary.wait_for_catchup(standby, target_lsn=pin, timeout=timeout)
        )
        result["pinned_at"] = format_lsn(pin or 0)
    except (TestbedError, psycopg.Error) as exc:
        return {**result, "caught_up": False, "error": str(exc).strip()[:300]}
    sums = {primary.name: _sums(primary), standby.name: _sums(standby)}
    differing = [t for t in TABLES if sums[primary.name][t] != sums[standby.name][t]]
    return {
        **result,
        "caught_up": True,
        "sums": sums,
        "standby_events": standby_event_digest(standby),
        "differing_tables": differing,
        "differences": {t: table_differences(primary, standby, t) for t in differing},
        "consistent": not differing,
    }


def standby_event_digest(server: Server) -> dict[str, Any]:
    """The distinct event ids of an Info Mart's facts: how many, and an md5 of them sorted
    and comma-joined (`event_digest` computes the same from a set in Python)."""
    count, digest = server.execute(EVENTS_DIGEST_SQL, dbname=INFOMART_DATABASE)[0]
    return {"count": count, "md5": digest}


def _timeline(server: Server) -> int:
    """The timeline being written now (the checkpoint's may still be the old one right
    after a promotion)."""
    if server.is_in_recovery():
        return int(server.scalar("SELECT timeline_id FROM pg_control_checkpoint()"))
    name = server.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")
    return int(name[:8], 16)


def _fork_lsn(promoted: Server) -> int | None:
    """Where the promoted server's current timeline branched off its parent's WAL."""
    timeline = _timeline(promoted)
    if timeline <= 1:
        return None
    try:
        text = promoted.scalar("SELECT pg_read_file(%s)", (f"pg_wal/{timeline:08X}.history",))
    except psycopg.Error:
        return None
    lines = [line.split() for line in text.splitlines() if line.strip() and line[0].isdigit()]
    return parse_lsn(lines[-1][1]) if lines else None


def divergence(old: Server, promoted: Server) -> dict[str, Any]:
    """Two Info Marts that both took writes after `promoted` left `old`'s replication."""
    fork = _fork_lsn(promoted)
    old_lsn = old.current_lsn()
    facts = "SELECT event_id || ' key ' || interaction_key FROM fact_interaction"
    rows = {
        s.name: {r[0] for r in s.execute(facts, dbname=INFOMART_DATABASE)} for s in (old, promoted)
    }
    events = {name: {r.split(" key ")[0] for r in found} for name, found in rows.items()}
    only_old = sorted(rows[old.name] - rows[promoted.name])
    only_promoted = sorted(rows[promoted.name] - rows[old.name])
    # Every table GIM writes, as the replica comparison sums them: two GIMs that each ran
    # cycles on their own Info Mart leave different state (marks, cycles, site judgements)
    # even when they happened to load the same facts in the same order.
    sums = {s.name: _sums(s) for s in (old, promoted)}
    differing = [t for t in TABLES if sums[old.name][t] != sums[promoted.name][t]]
    past_fork = old_lsn - fork if fork is not None else None
    cannot_resume = bool(past_fork and past_fork > 0)
    return {
        "old_primary": old.name,
        "promoted": promoted.name,
        "fork_lsn": format_lsn(fork) if fork is not None else None,
        "promoted_timeline": _timeline(promoted),
        "old_primary_lsn": format_lsn(old_lsn),
        "old_wal_past_fork_bytes": past_fork,
        "replication_can_resume": not cannot_resume,
        "fact_rows_only_in": {old.name: len(only_old), promoted.name: len(only_promoted)},
        "events_only_in": {
            old.name: len(events[old.name] - events[promoted.name]),
            promoted.name: len(events[promoted.name] - events[old.name]),
        },
        "first_rows_only_in": {old.name: only_old[:SHOWN], promoted.name: only_promoted[:SHOWN]},
        "differing_tables": differing,
        # Diverged means the Info Marts really differ: fact rows or keys, or what their GIMs
        # wrote of their own state. That replication cannot resume is reported beside it,
        # not counted as a divergence on its own.
        "diverged": bool(only_old) or bool(only_promoted) or bool(differing),
    }


def marks(deployment: Deployment, infomart: str) -> dict[str, Any]:
    """Per source of the reporting Info Mart: its high-water mark, what the IDB had
    committed (its snapshot xmin), and the rows below the mark that GIM took nowhere
    (not a fact, not staged, not discarded): a skipped row."""
    server = deployment.server(infomart)
    marks = dict(server.execute("SELECT source, hwm FROM gim_source", dbname=INFOMART_DATABASE))
    taken = {
        row[0]
        for table in ("fact_interaction", "staging", "gim_discard")
        for row in server.execute(f"SELECT event_id FROM {table}", dbname=INFOMART_DATABASE)
    }
    databases = {
        extraction_source(i, deployment.incarnation.get(i.idb, 1)): (i.idb, i.database)
        for i in deployment.topology.icons
    }
    found: dict[str, Any] = {}
    for source, hwm in sorted(marks.items()):
        if source not in databases:
            continue
        idb, database = databases[source]
        if idb not in deployment.servers or deployment.server(idb).state() != "running":
            continue  # a lost IDB: nothing to compare with
        idb_server = deployment.server(idb)
        xmin = int(idb_server.scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
        try:
            below = idb_server.execute(
                "SELECT event_id FROM events WHERE txid < %s::xid8",
                (str(hwm),),
                dbname=database,
            )
        except psycopg.Error:  # the ICON never created its tables there
            below = []
        skipped = sorted(r[0] for r in below if r[0] not in taken)
        found[source] = {
            "hwm": hwm,
            "idb_xmin": xmin,
            "below_mark": len(below),
            "skipped": skipped[:SHOWN],
            "skipped_count": len(skipped),
        }
    return found
