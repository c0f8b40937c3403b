"""End-to-end throughput of the pipeline: the highest offered rate at which nothing is lost.

A fixed offered rate either measures nothing (the pipeline keeps up with room to spare) or
trips over the rules: offered too much on a loaded moment, the pipeline falls more than the
threshold behind (at 1h = 1s, 8 wall seconds), GIM declares a site stuck and discards its
late data, as it must. So this searches: it doubles the offered rate until a trial loses
events (or cannot settle), then bisects between the last lossless rate and the first lossy
one, `--steps` times. Each trial brings up the default topology (every cross-site
connection through the WAN proxy), offers the rate (both sites together) for `--seconds`,
stops the sources and waits until every ledger event is a fact or discarded. At the
highest lossless rate it runs `--runs` more trials and reports their median throughput:
ledger events over the wall time from the first emission to the last fact. A baseline is
measured in the same run: the same number of rows COPY'd straight into one table of one
server, the ceiling no pipeline beats. Prints one JSON object.

    python bench/pipeline.py [--runs 3] [--seconds 5] [--start 2000] [--steps 3]
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
from testbed.errors import TestbedError
from testbed.pipeline.control import Pipeline, PipelineSettings
from testbed.procs import run_stoppable
from testbed.topology import default_topology

SETTLE_WALL_S = 120.0  # a trial that has not caught up by then fell behind for good
MAX_OFFERED = 200_000.0  # events/s: past any machine this runs on


def one_run(home: str, offered: float, seconds: float) -> dict[str, float]:
    """One trial at `offered` events/s: what it emitted, what became facts, how fast."""
    with LocalBackend(home=home) as backend:
        deployment = bring_up(default_topology(), backend)
        settings = PipelineSettings(rate_per_hour=offered / 2, seed=1)  # per site, 1h = 1s
        pipeline = Pipeline(deployment, settings, Clock.start(factor=3600))
        with pipeline:
            pipeline.start()
            start = time.perf_counter()
            time.sleep(seconds)
            try:
                pipeline.settle(timeout=SETTLE_WALL_S)
                settled = True
            except TestbedError:  # it fell behind for good: lossy, not a failure
                settled = False
            elapsed = time.perf_counter() - start
            events = len(pipeline.ledger())
            facts = len(pipeline.facts())
        baseline = copy_baseline(deployment.server("infomart1"), events)
    return {
        "offered": offered,
        "events": events,
        "lost": events - facts,
        "settled": settled,
        "seconds": elapsed,
        "eps": events / elapsed,
        "baseline": baseline,
    }


def lossless(trial: dict[str, float]) -> bool:
    return bool(trial["settled"]) and trial["lost"] == 0


def search(home: str, start: float, seconds: float, steps: int) -> tuple[float, list[dict]]:
    """The highest offered rate found lossless, and every trial on the way."""
    trials: list[dict] = []
    good, bad = 0.0, None
    rate = start
    while bad is None and rate <= MAX_OFFERED:
        trial = one_run(home, rate, seconds)
        trials.append(trial)
        if lossless(trial):
            good, rate = rate, rate * 2
        else:
            bad = rate
    for _ in range(steps if bad is not None else 0):
        rate = round((good + bad) / 2)
        trial = one_run(home, rate, seconds)
        trials.append(trial)
        if lossless(trial):
            good = rate
        else:
            bad = rate
    return good, trials


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
    parser.add_argument("--runs", type=int, default=3, help="trials at the rate found")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--start", type=float, default=2000.0, help="events/s, both sites")
    parser.add_argument("--steps", type=int, default=3, help="bisection steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-", dir="/var/tmp") as home:
        found, trials = search(home, args.start, args.seconds, args.steps)
        results = [one_run(home, found, args.seconds) for _ in range(args.runs)] if found else []
    measured = [r for r in results if lossless(r)]
    eps = statistics.median(r["eps"] for r in measured) if measured else None
    baseline = statistics.median(r["baseline"] for r in trials + results)
    print(
        json.dumps(
            {
                "runs": args.runs,
                "highest_lossless_offered_events_per_second": found,
                "events_per_second": round(eps, 1) if eps is not None else None,
                "lossless_runs_at_that_rate": len(measured),
                "events_per_second_runs": [round(r["eps"], 1) for r in results],
                "trials": [
                    {
                        "offered": t["offered"],
                        "events": t["events"],
                        "lost": t["lost"],
                        "settled": t["settled"],
                        "events_per_second": round(t["eps"], 1),
                    }
                    for t in trials
                ],
                "baseline_copy_events_per_second": round(baseline, 1),
                "ratio_to_baseline": round(eps / baseline, 3) if eps is not None else None,
            }
        )
    )


if __name__ == "__main__":
    run_stoppable(main)
