"""End-to-end throughput of the pipeline: events per second from the ledgers to facts.

Each run brings up the default topology (every cross-site connection through the WAN
proxy), offers `--offered` events per second (both sites together) for `--seconds`, stops
the sources and waits until every ledger event is a fact. Throughput is ledger events over
the wall time from the first emission to the last fact. Prints one JSON object with the
median of `--runs` runs, and a baseline measured in the same run: the same number of rows
COPY'd straight into one table of one server, the ceiling no pipeline beats.

    python bench/pipeline.py [--runs 5] [--seconds 5] [--offered 12000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from testbed.backends.local import LocalBackend
from testbed.clock import Clock
from testbed.deployment import bring_up
from testbed.pipeline.control import Pipeline, PipelineSettings
from testbed.topology import default_topology


def one_run(home: str, offered: float, seconds: float) -> dict[str, float]:
    with LocalBackend(home=home) as backend:
        deployment = bring_up(default_topology(), backend)
        settings = PipelineSettings(rate_per_hour=offered / 2, seed=1)  # per site, 1h = 1s
        pipeline = Pipeline(deployment, settings, Clock.start(factor=3600))
        with pipeline:
            pipeline.start()
            start = time.perf_counter()
            time.sleep(seconds)
            pipeline.settle(timeout=300)
            elapsed = time.perf_counter() - start
            events = len(pipeline.ledger())
            facts = len(pipeline.facts())
        assert facts == events, f"{events - facts} events missing"
        baseline = copy_baseline(deployment.server("infomart1"), events)
    return {"events": events, "seconds": elapsed, "eps": events / elapsed, "baseline": baseline}


def copy_baseline(server, events: int) -> float:
    with server.connect("infomart") as conn:
        conn.execute(
            "CREATE TABLE bench_copy (event_id text, site text, ts float8,"
            " payload text, source text)"
        )
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY bench_copy FROM STDIN") as copy:
            for i in range(events):
                copy.write_row((f"site1-{i:09d}", "site1", float(i), f"call {i}", "icon1a"))
        return events / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--offered", type=float, default=12000.0, help="events/s, both sites")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-", dir="/var/tmp") as home:
        for _ in range(args.runs):
            results.append(one_run(home, args.offered, args.seconds))
    eps = statistics.median(r["eps"] for r in results)
    baseline = statistics.median(r["baseline"] for r in results)
    print(
        json.dumps(
            {
                "runs": args.runs,
                "offered_events_per_second": args.offered,
                "events_per_second": round(eps, 1),
                "events_per_run": [r["events"] for r in results],
                "events_per_second_runs": [round(r["eps"], 1) for r in results],
                "baseline_copy_events_per_second": round(baseline, 1),
                "ratio_to_baseline": round(eps / baseline, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
