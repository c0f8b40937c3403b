"""`testbed run` with several scenarios at once: on virtual time they share the machine and
each still gets the outcome it gets alone; on the realtime clock they may not share it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCENARIO = """\
name: {name}
description: "a short outage, then a settle"
topology: active-standby
clock: {clock}
settings: {{extract_data_stuck_threshold: 1h}}
workload: {{rate: 600/h, seed: {seed}}}
steps:
  - {{at: 30m, partition: [site1, site2], mode: reset}}
  - {{at: 2h, heal: [site1, site2]}}
  - {{at: 2h, settle: 1h}}
"""


def _testbed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args, "--home", str(cwd / "home")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def _lost(out: Path) -> tuple[frozenset[str], object]:
    """The ids of the events lost, and the sites stuck."""
    emitted = {json.loads(line)["id"] for line in (out / "ledger.jsonl").read_text().splitlines()}
    facts = {row[0] for row in json.loads((out / "final.json").read_text())["facts"]}
    stuck = json.loads((out / "report.json").read_text())["figures"]["stuck_sites"]
    return frozenset(emitted - facts), stuck


def test_scenarios_run_at_once_get_the_outcomes_they_get_alone(tmp_path: Path) -> None:
    files = []
    for seed in (3, 4):
        path = tmp_path / f"short-{seed}.yaml"
        path.write_text(SCENARIO.format(name=f"short-{seed}", clock="virtual", seed=seed))
        files.append(str(path))
    together = _testbed(
        "run", *files, "--jobs", "2", "--out", str(tmp_path / "together"), cwd=tmp_path
    )
    assert together.returncode == 0, together.stdout[-2000:] + together.stderr[-2000:]
    for seed, file in zip((3, 4), files, strict=True):
        alone = _testbed(
            "run", file, "--jobs", "1", "--out", str(tmp_path / f"alone-{seed}"), cwd=tmp_path
        )
        assert alone.returncode == 0, alone.stderr[-2000:]
        both = _lost(tmp_path / "together" / f"short-{seed}")
        assert both == _lost(tmp_path / f"alone-{seed}")
        assert both[0]  # the half hour past the threshold is lost: not a no-op


def test_runs_at_once_on_the_realtime_clock_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "realtime.yaml"
    path.write_text(SCENARIO.format(name="realtime", clock="1h = 3s", seed=3))
    result = _testbed("run", str(path), str(path), "--jobs", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--jobs 2 needs virtual time" in result.stderr


def test_the_same_scenario_twice_at_once_gets_a_folder_each_and_one_outcome(
    tmp_path: Path,
) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(SCENARIO.format(name="twice", clock="virtual", seed=6))
    result = _testbed("run", str(path), str(path), "--jobs", "2", "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    first, second = _lost(tmp_path / "out" / "twice"), _lost(tmp_path / "out" / "twice~2")
    assert first == second and first[0]


def test_results_zipped_with_their_calls_end_the_pool_quietly() -> None:
    """`zip(calls, in_parallel(...))` leaves the generator at its last yield; closing it then
    is not an interruption: no worker is signalled, nothing is printed."""
    code = (
        "from testbed.scenarios.batch import in_parallel\n"
        "calls = [(-1,), (-2,), (-3,)]\n"
        "print([r for _, r in zip(calls, in_parallel(abs, calls, 2), strict=False)])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout.strip(), run.stderr) == (0, "[1, 2, 3]", "")
