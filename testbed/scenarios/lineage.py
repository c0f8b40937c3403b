"""Where did an event stop? Each hop of its way, looked up once the run has settled:
ledger -> ICON (delivered?) -> ICON queue -> IDB databases -> GIM staging or discard -> fact.

Gathered by the run (it needs the live databases) for the events that were lost or counted
twice, so a failed check can say where each one went missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testbed.deployment import Deployment
from testbed.pipeline.control import Pipeline
from testbed.pipeline.pqueue import queued_events
from testbed.pipeline.workload import Event
from testbed.topology import INFOMART_DATABASE


def lineage(
    deployment: Deployment, pipeline: Pipeline, infomart: str, events: list[Event]
) -> dict[str, dict[str, Any]]:
    if not events:
        return {}
    ids = [e.id for e in events]
    topo = deployment.topology
    delivered = _deliveries(pipeline)
    in_queue: dict[str, list[str]] = {i: [] for i in ids}
    in_idb: dict[str, list[str]] = {i: [] for i in ids}
    for icon in topo.icons:
        for event_id in _queued(pipeline.icons[icon.name].local_path("queue"), set(ids)):
            in_queue[event_id].append(icon.name)
        try:
            rows = deployment.server(icon.idb).execute(
                "SELECT event_id FROM events WHERE event_id = ANY(%s)", (ids,), dbname=icon.database
            )
        except Exception:
            rows = []
        for (event_id,) in rows:
            in_idb[event_id].append(f"{icon.idb}/{icon.database}")
    server = deployment.server(infomart)
    staged = {
        r[0]
        for r in server.execute(
            "SELECT event_id FROM staging WHERE event_id = ANY(%s)",
            (ids,),
            dbname=INFOMART_DATABASE,
        )
    }
    discarded = {
        r[0]
        for r in server.execute(
            "SELECT event_id FROM gim_discard WHERE event_id = ANY(%s)",
            (ids,),
            dbname=INFOMART_DATABASE,
        )
    }
    facts = dict(
        server.execute(
            "SELECT event_id, count(*) FROM fact_interaction WHERE event_id = ANY(%s)"
            " GROUP BY event_id",
            (ids,),
            dbname=INFOMART_DATABASE,
        )
    )
    traced = {}
    for event in events:
        hops = {
            "site": event.site,
            "ts": event.ts,
            "delivered_to": delivered.get(event.id, []),
            "queued_in": in_queue[event.id],
            "idbs": in_idb[event.id],
            "staged": event.id in staged,
            "discarded": event.id in discarded,
            "facts": facts.get(event.id, 0),
        }
        hops["stopped_at"] = _stop(hops)
        traced[event.id] = hops
    return traced


def _stop(hops: dict[str, Any]) -> str:
    if hops["facts"] > 1:
        return "fact: loaded more than once"
    if hops["discarded"]:
        return "GIM: discarded by the stuck-threshold rule"
    if hops["staged"]:
        return "GIM staging: beyond the transform boundary"
    if hops["idbs"]:
        return "GIM extraction: in an IDB, never extracted"
    if hops["queued_in"]:
        return "ICON queue: never written to an IDB"
    if hops["delivered_to"]:
        return "ICON: acknowledged, then neither queued nor written"
    return "data source: no ICON took it"


def _deliveries(pipeline: Pipeline) -> dict[str, list[str]]:
    """Event id -> ICONs that acknowledged its batch (from the sources' delivery logs)."""
    found: dict[str, list[str]] = {}
    for source in pipeline.sources.values():
        log = source.local_path("deliveries")
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            batch = json.loads(line)
            first, last = batch["first"], batch["last"]
            acked = [name for name, ok in batch["delivered"].items() if ok]
            prefix, lo, hi = first.rsplit("-", 1)[0], _index(first), _index(last)
            for index in range(lo, hi + 1):  # one line per batch and ICON, or per batch
                found.setdefault(f"{prefix}-{index:09d}", []).extend(acked)
    return found


def _index(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


def _queued(path: Path, wanted: set[str]) -> list[str]:
    return [event_id for event_id in queued_events(path) if event_id in wanted]
