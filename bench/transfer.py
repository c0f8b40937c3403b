"""The rates the transfer planner (`testbed plan transfer`) works from, measured.

Prints one JSON object:

- base backup throughput (pg_basebackup of a ~200 MB database, WAL streamed alongside)
  taken directly, through the WAN proxy with no toxic, and through the proxy with a
  `bandwidth` toxic on the downstream stream; median of `--runs` each, interleaved so
  machine noise hits all three alike;
- link efficiency: the rate achieved through the bandwidth toxic divided by the toxic's
  configured rate, i.e. what fraction of a link's nominal rate a base backup really gets;
- ICON wire bytes: what ICON's own batch statement sends across the WAN (both ways, from
  the proxy's counters) per batch and per event, fitted over batches of 1 and 100 events of
  the workload's shape; the planner counts this share of the link during a transfer;
- WAL bytes per event: `pg_current_wal_lsn()` before and after loading `--events` events
  shaped like the pipeline's (ids, payloads, sources as the workload and GIM make them)
  into an Info Mart database, in batches of `--batch`, one transaction per batch. Two
  figures: the way GIM loads (into `staging`, then moved into `fact_interaction` by the
  transform), which the planner uses, and a plain insert into `fact_interaction` alone,
  the least any load can write.

    python bench/transfer.py [--runs 3] [--rate-kb-s 20000] \
        [--write testbed/operations/measured_rates.json]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from testbed.backends.local import LocalBackend
from testbed.clock import Clock
from testbed.credentials import ENV as PASSFILE_ENV
from testbed.netfault.client import ToxiproxyClient
from testbed.netfault.wan import Traffic
from testbed.pipeline.icon import Icon
from testbed.pipeline.pqueue import Item
from testbed.pipeline.schema import IDB_DDL, INFOMART_DDL
from testbed.pipeline.workload import schedule
from testbed.postgres import Server, split_address
from testbed.procs import run_stoppable

SITE, SOURCE = "site1", "icon1a"
BATCHES = 50


def fill(server: Server, rows: int) -> int:
    """A table of `rows` rows of incompressible-looking text; its size on disk in bytes."""
    server.execute(
        "CREATE TABLE filler AS SELECT g, md5(g::text) AS a, md5((g + 1)::text) AS b"
        f" FROM generate_series(1, {int(rows)}) AS g"
    )
    server.execute("CHECKPOINT")  # every backup then starts from the same state
    return int(server.scalar("SELECT pg_total_relation_size('filler')"))


def tree_bytes(path: Path, skip: str | None = None) -> int:
    """Sum of the sizes of the files under `path`, leaving out the subfolder `skip`."""
    total = 0
    for root, dirs, files in os.walk(path):
        if skip and Path(root) == path:
            dirs[:] = [d for d in dirs if d != skip]
        total += sum(os.lstat(os.path.join(root, name)).st_size for name in files)
    return total


def time_backup(server: Server, name: str, via: str | None) -> tuple[int, int, float]:
    """Bytes (all, and without pg_wal) and seconds of one base backup.

    The WAL comes over a second connection of its own (`--wal-method stream`), which has
    its own bandwidth toxic and runs alongside, and its segment file is zero-padded to
    16 MB whatever was streamed; so the rate of the data connection is the size without
    `pg_wal` over the time. The copy is deleted at once to keep memory free.
    """
    start = time.perf_counter()
    path = server.backup(name, via=via)
    seconds = time.perf_counter() - start
    size, data = tree_bytes(path), tree_bytes(path, skip="pg_wal")
    shutil.rmtree(path)
    return size, data, seconds


def _rows(first: int, count: int, loaded_ts: float) -> list[tuple]:
    return [
        (f"{SITE}-{i:09d}", SITE, 1000.0 + i * 1.8, f"call {i} at {SITE} agent {i % 500}", SOURCE)
        + ((loaded_ts,) if loaded_ts else ())
        for i in range(first, first + count)
    ]


def wal_per_event(server: Server, dbname: str, events: int, batch: int, gim_shape: bool) -> float:
    """WAL bytes written per event loaded into a fresh Info Mart database `dbname`.

    `gim_shape`: each batch is inserted into `staging` and then moved into
    `fact_interaction` with GIM's own transform statement, in one transaction, as GIM does;
    otherwise each batch is inserted straight into `fact_interaction`.
    """
    server.create_database(dbname)
    server.execute(INFOMART_DDL, dbname=dbname)
    server.execute("CHECKPOINT")  # so no checkpoint falls inside the measurement by chance
    with server.connect(dbname) as conn:
        before = server.current_lsn()
        for first in range(0, events, batch):
            count = min(batch, events - first)
            now = time.time()
            with conn.transaction(), conn.cursor() as cur:
                if gim_shape:
                    cur.executemany(
                        "INSERT INTO staging (event_id, site, ts, payload, source)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        _rows(first, count, 0.0),
                    )
                    cur.execute(
                        "WITH moved AS (DELETE FROM staging WHERE ts <= %s RETURNING *)"
                        " INSERT INTO fact_interaction (event_id, site, ts, payload, source,"
                        " loaded_ts) SELECT event_id, site, ts, payload, source, %s FROM moved"
                        " ORDER BY ts, event_id",
                        (1e12, now),
                    )
                else:
                    cur.executemany(
                        "INSERT INTO fact_interaction (event_id, site, ts, payload, source,"
                        " loaded_ts) VALUES (%s, %s, %s, %s, %s, %s)",
                        _rows(first, count, now),
                    )
        after = server.current_lsn()
    return (after - before) / events


def icon_wire_bytes(backend: LocalBackend, client: ToxiproxyClient, batch: int) -> float:
    """Bytes ICON's write of one batch of `batch` events moves through a WAN proxy (the
    statement up, the answer down), averaged over `BATCHES` batches into a fresh IDB."""
    idb = backend.new_server(f"idb-{batch}", "site2", "idb").init().start()
    idb.execute(IDB_DDL)
    route = client.create_proxy(f"icon-{batch}", upstream=idb.address)
    os.environ[PASSFILE_ENV] = str(idb.passfile)  # what the component's own connect reads
    with tempfile.TemporaryDirectory(prefix="bench-icon-") as folder:
        config = {
            "name": "icon1b",
            "site": SITE,
            "queue": str(Path(folder) / "queue.db"),
            "heartbeat_interval": 60.0,
        }
        icon = Icon(config, Clock.start())
        events = schedule(SITE, 600.0, seed=1)
        host, port = split_address(route.listen)
        with psycopg.connect(idb.conninfo(), host=host, port=port, autocommit=True) as conn:
            conn.execute("SELECT 1")  # connection start-up is not a batch's cost
            before = _proxy_bytes(client, route.name)
            seq = 0
            for _ in range(BATCHES):
                items = []
                for event in itertools.islice(events, batch):
                    seq += 1
                    body = {
                        "id": event.id,
                        "site": event.site,
                        "ts": event.ts,
                        "payload": event.payload,
                    }
                    items.append(Item(seq, "event", event.ts, body))
                icon._write(conn, items)
            moved = _proxy_bytes(client, route.name) - before
        icon.queue.close()
    idb.stop()
    return moved / BATCHES


def _proxy_bytes(client: ToxiproxyClient, proxy: str) -> int:
    """Bytes the proxy sent both ways so far."""
    sent = Traffic.from_metrics(client.metrics()).proxies
    return sum(sent.get((proxy, stream), 0) for stream in ("upstream", "downstream"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2_000_000, help="~200 MB of table data")
    parser.add_argument(
        "--rate-kb-s", type=int, default=20_000, help="bandwidth toxic rate (1 KB = 1000 B)"
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--write", metavar="PATH", help="also write the JSON to this file")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-transfer-", dir="/var/tmp") as home,
        LocalBackend(home=home) as backend,
    ):
        server = backend.new_server("src", "site1", "infomart").init().start()
        table_bytes = fill(server, args.rows)
        client = backend.start_proxy()
        plain = client.create_proxy("wan-plain", upstream=server.address)
        paced = client.create_proxy("wan-paced", upstream=server.address)
        # One link for both of pg_basebackup's connections, as the testbed's WAN does.
        paced.add_toxic(
            "bandwidth", stream="downstream", name="link", rate=args.rate_kb_s, group="wan"
        )
        routes = {"direct": None, "proxy": plain.listen, "bandwidth": paced.listen}
        sizes: dict[str, list[int]] = {route: [] for route in routes}
        data: dict[str, list[int]] = {route: [] for route in routes}
        seconds: dict[str, list[float]] = {route: [] for route in routes}
        for run in range(args.runs):
            for route, via in routes.items():
                size, data_size, took = time_backup(server, f"{route}-{run}", via)
                sizes[route].append(size)
                data[route].append(data_size)
                seconds[route].append(took)
        icon_1, icon_100 = (icon_wire_bytes(backend, client, n) for n in (1, 100))
        wal_fact = wal_per_event(server, "infomart_fact", args.events, args.batch, False)
        wal_gim = wal_per_event(server, "infomart", args.events, args.batch, True)
        version = server.scalar("SHOW server_version")

    median = statistics.median
    mb_s = {r: median(d / t / 1e6 for d, t in zip(data[r], seconds[r], strict=True)) for r in data}
    configured_mb_s = args.rate_kb_s * 1000 / 1e6
    result = {
        "basebackup_direct_mb_s": round(mb_s["direct"], 1),
        "basebackup_proxy_mb_s": round(mb_s["proxy"], 1),
        "basebackup_bandwidth_mb_s": round(mb_s["bandwidth"], 2),
        "bandwidth_toxic_kb_s": args.rate_kb_s,
        "link_efficiency": round(mb_s["bandwidth"] / configured_mb_s, 3),
        "backup_bytes": int(median(sizes["direct"])),
        "backup_bytes_without_wal": int(median(data["direct"])),
        "table_bytes": table_bytes,
        "basebackup_seconds": {r: round(median(seconds[r]), 2) for r in routes},
        "icon_wire_bytes_per_event": round((icon_100 - icon_1) / 99, 1),
        "icon_wire_bytes_per_batch": round(icon_1 - (icon_100 - icon_1) / 99, 1),
        "wal_bytes_per_event": round(wal_gim, 1),
        "wal_bytes_per_event_fact_insert_only": round(wal_fact, 1),
        "wal_events": args.events,
        "wal_batch": args.batch,
        "runs": args.runs,
        "measured_on": datetime.date.today().isoformat(),
        "source": "bench/transfer.py",
        "postgres": version,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    text = json.dumps(result)
    print(text)
    if args.write:
        Path(args.write).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_stoppable(main)
