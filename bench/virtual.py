"""A run's wall time on the virtual clock against the realtime clock at 1h = 1s.

On the realtime clock a run takes its scenario's duration over the clock; on the virtual
clock it takes its work: the time jumps whenever the run is quiescent. This runs the
catalog's `wan-outage-long` (11 h of blackhole against an 8 h threshold, 12 h of scenario
time before its settle) in both modes, interleaved pair by pair so that both see the same
machine, `--runs` times each, and prints one JSON object: the median wall seconds of each
mode (the whole run, reports included, as `testbed run` pays it) and of its timeline alone
(the pipeline's start to the end of the settle), their ratios, the events each lost, and
whether the virtual runs lost exactly the same events.

    python bench/virtual.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.history import of_kind, read_history
from testbed.procs import run_stoppable
from testbed.scenarios.engine import ScenarioRun
from testbed.scenarios.spec import load_scenario
from testbed.verdict.report import write_reports

CATALOG = Path(__file__).resolve().parent.parent / "scenarios" / "wan-outage-long.yaml"
CLOCKS = {"realtime": "1h = 1s", "virtual": "virtual"}


def lost_ids(out: Path) -> frozenset[str]:
    emitted = {json.loads(line)["id"] for line in (out / "ledger.jsonl").read_text().splitlines()}
    facts = {row[0] for row in json.loads((out / "final.json").read_text())["facts"]}
    return frozenset(emitted - facts)


def measure(folder: Path, mode: str, index: int) -> dict[str, Any]:
    text = re.sub(r"(?m)^clock: .*$", f"clock: {CLOCKS[mode]}", CATALOG.read_text())
    path = folder / f"{mode}.yaml"
    path.write_text(text)
    out = folder / f"{mode}-{index}"
    began = time.perf_counter()
    ScenarioRun(load_scenario(path), out, home=str(folder / "home")).run()
    outcome = write_reports(out)
    wall = time.perf_counter() - began
    history = read_history(out / "history.jsonl")
    clock = next(of_kind(history, "virtual-clock"), None)
    started = next(of_kind(history, "pipeline-started"))["wall"]
    settled = next(of_kind(history, "settled"))["wall"]
    return {
        "wall_s": wall,
        "timeline_s": settled - started,
        "passed": outcome.passed,
        "lost": lost_ids(out),
        "instants": clock["instants"] if clock else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in CLOCKS}
    with tempfile.TemporaryDirectory(prefix="bench-virtual-") as folder:
        for index in range(args.runs):
            for mode in CLOCKS:
                results[mode].append(measure(Path(folder), mode, index))
    report: dict[str, Any] = {"scenario": CATALOG.stem, "runs": args.runs}
    for mode, runs in results.items():
        report[f"{mode}_wall_s"] = round(statistics.median(r["wall_s"] for r in runs), 2)
        report[f"{mode}_timeline_s"] = round(statistics.median(r["timeline_s"] for r in runs), 2)
        report[f"{mode}_lost_events"] = [len(r["lost"]) for r in runs]
        report[f"{mode}_passed"] = all(r["passed"] for r in runs)
    report["virtual_instants"] = results["virtual"][0]["instants"]
    report["ratio_virtual_to_realtime"] = round(
        report["virtual_wall_s"] / report["realtime_wall_s"], 3
    )
    report["timeline_ratio_virtual_to_realtime"] = round(
        report["virtual_timeline_s"] / report["realtime_timeline_s"], 3
    )
    report["virtual_runs_lost_the_same_events"] = len({r["lost"] for r in results["virtual"]}) == 1
    print(json.dumps(report))


if __name__ == "__main__":
    run_stoppable(main)
