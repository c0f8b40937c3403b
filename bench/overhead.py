"""The fixed cost of a scenario run on the local backend, per phase.

A run's wall time is its duration over the clock factor plus a fixed cost: bringing the
topology up, booting the pipeline, the lead before scenario time 0, the final settle's
polling, saving the contents, tearing down, and the report with its plot. Fuzzing pays it
hundreds of times. This runs a scenario with almost nothing in it (one settle at 10 min of
scenario time, 0.17 s at 1h = 1s), `--runs` times, and prints one JSON object: the median
of each phase and of the total, from the run's own history stamps.

    python bench/overhead.py [--runs 5] [--baseline]

`--baseline` interleaves runs whose components start as new interpreters
(`TESTBED_COMPONENT_LAUNCH=exec`, with the longer lead they need), for a ratio measured in
the same session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from testbed.history import read_history
from testbed.launcher import LAUNCH_ENV
from testbed.procs import run_stoppable
from testbed.scenarios.engine import ScenarioRun
from testbed.scenarios.spec import load_scenario
from testbed.verdict.report import write_reports

TINY = textwrap.dedent(
    """\
    name: overhead
    description: "almost nothing: what every run costs besides its timeline"
    clock: 1h = 1s
    workload:
      rate: 600/h
      seed: 1
    steps:
      - at: 10m
        settle: 1h
    expect:
      loss:
        site1: 0
        site2: 0
      duplicates: 0
    """
)


def phases(out: Path, began: float, reported: float, ended: float) -> dict[str, float]:
    """Wall seconds of each phase, from the history's wall stamps."""
    history = read_history(out / "history.jsonl")
    wall = {e["kind"]: e["wall"] for e in reversed(history)}  # first of each kind
    run = next(e for e in history if e["kind"] == "run")
    factor = float(run["factor"])
    step = next(e for e in history if e["kind"] == "step")
    zero = step["wall"] - step["t"] / factor  # when scenario time was 0
    timeline = (step["step"]["at"]) / factor  # the scenario's own content, in wall seconds
    settled = wall.get("settled", wall["step-done"])
    return {
        "bring_up": wall["topology"] - wall["run"],
        "pipeline_boot": wall["pipeline-started"] - wall["topology"],
        "lead": zero - wall["pipeline-started"],
        "settle_poll": settled - step["wall"],
        "finish_and_teardown": wall["teardown"] - settled,
        "report": reported - ended,
        "process_start": wall["run"] - began,
        "total_fixed": reported - began - timeline,
    }


def measure(folder: Path, scenario: Any, index: int) -> dict[str, float]:
    out = folder / f"run-{index}"
    began = time.time()
    ScenarioRun(scenario, out, home=str(folder / "home")).run()
    ended = time.time()
    outcome = write_reports(out)
    reported = time.time()
    assert outcome.passed, [c.message for c in outcome.checks if not c.passed]
    return phases(out, began, reported, ended)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help=f"also run with {LAUNCH_ENV}=exec (components as new interpreters), interleaved",
    )
    args = parser.parse_args()
    modes = ["fork", "exec"] if args.baseline else [os.environ.get(LAUNCH_ENV) or "fork"]
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    first: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder:
        path = Path(folder) / "overhead.yaml"
        path.write_text(TINY)
        scenario = load_scenario(path)
        for index in range(args.runs):
            for number, mode in enumerate(modes):
                os.environ[LAUNCH_ENV] = mode
                result = measure(Path(folder), scenario, index * len(modes) + number)
                first.setdefault(mode, result["total_fixed"])
                results[mode].append(result)
    report: dict[str, Any] = {"runs": args.runs}
    for mode, runs in results.items():
        medians = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        key = "median_s" if mode == modes[0] else f"median_s_{mode}"
        report[key] = medians
        # The first run of a process also starts the fork server (while servers come up).
        report[f"first_run_total_s_{mode}"] = round(first[mode], 3)
    if args.baseline:
        ratio = report["median_s"]["total_fixed"] / report["median_s_exec"]["total_fixed"]
        report["total_ratio_fork_to_exec"] = round(ratio, 3)
    print(json.dumps(report))


if __name__ == "__main__":
    run_stoppable(main)
