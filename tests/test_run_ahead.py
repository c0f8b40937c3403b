"""`--testbed-jobs`: a session's scenario files on virtual time run a few at a time, ahead of
their turn, each reported by its own test with the outcome it gets alone; realtime files,
and the tests around a block, run alone; a session stopped early stops what ran ahead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.test_nothing_left import assert_nothing_left, ours

SCENARIO = """\
name: {name}
clock: {clock}
settings:
  extract_data_stuck_threshold: {threshold}
workload:
  rate: 600/h
  seed: {seed}
steps:
  - at: 1h
    partition: [site1, site2]
    mode: blackhole
  - at: 2h
    heal: [site1, site2]
  - at: 2h
    settle: 1h
expect:
  loss:
    site1: 0
    site2: {loss}
  duplicates: 0
"""
# A plain test between two blocks: it notes when it ran, to show nothing ran beside it.
BETWEEN = """
import time

def test_between(tmp_path_factory):
    with open({stamp!r}, "w") as out:
        out.write(str(time.time()))
"""


def write_session(folder: Path, files: dict[str, dict[str, object]]) -> Path:
    scenarios = folder / "scenarios"
    scenarios.mkdir(parents=True)
    for name, fields in files.items():
        values = {"clock": "virtual", "threshold": "30m", "loss": "30m", "seed": 3, **fields}
        text = SCENARIO.format(name=name, **values)
        (scenarios / f"{name}.yaml").write_text(text)
    return scenarios


def pytest_session(
    folder: Path, *args: str, jobs: str = "2", timeout: float = 600
) -> tuple[subprocess.CompletedProcess[str], dict[str, ET.Element]]:
    junit = folder / "junit.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={junit}",
            f"--testbed-reports={folder / 'reports'}",
            f"--testbed-jobs={jobs}",
            *args,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TESTBED_HOME": str(folder / "home")},
    )
    cases = {}
    if junit.exists():
        cases = {c.get("name", ""): c for c in ET.parse(junit).getroot().iter("testcase")}
    return result, cases


def span(run_folder: Path) -> tuple[float, float]:
    """The wall time a run's history spans."""
    lines = (run_folder / "history.jsonl").read_text().splitlines()
    return json.loads(lines[0])["wall"], json.loads(lines[-1])["wall"]


def lost(run_folder: Path) -> set[str]:
    emitted = {json.loads(line)["id"] for line in (run_folder / "ledger.jsonl").open()}
    facts = {row[0] for row in json.loads((run_folder / "final.json").read_text())["facts"]}
    return emitted - facts


def test_files_run_ahead_overlap_and_each_gets_the_outcome_it_gets_alone(tmp_path: Path) -> None:
    write_session(tmp_path / "ahead", {"a": {}, "b": {"seed": 4}, "c": {"seed": 5}})
    result, cases = pytest_session(tmp_path / "ahead", "scenarios")
    assert result.returncode == 0, result.stdout[-3000:]
    assert set(cases) == {"a", "b", "c"}
    reports = tmp_path / "ahead" / "reports"
    spans = [span(reports / name) for name in ("a", "b", "c")]
    assert spans[1][0] < spans[0][1], f"b started after a ended: {spans}"  # they overlapped
    properties = {p.get("name") for p in cases["b"].iter("property")}
    assert {"lost_events", "report"} <= properties
    write_session(tmp_path / "alone", {"b": {"seed": 4}})
    result, _ = pytest_session(tmp_path / "alone", "scenarios", jobs="1")
    assert result.returncode == 0, result.stdout[-3000:]
    alone = lost(tmp_path / "alone" / "reports" / "b")
    assert alone, "the outage lost nothing: the comparison proves nothing"
    assert lost(reports / "b") == alone


def test_a_failing_file_ahead_fails_its_own_test_only(tmp_path: Path) -> None:
    # A 1 h outage against a 30 min threshold loses 30 min: expecting none must fail.
    write_session(tmp_path, {"a": {}, "b": {"loss": 0}, "c": {"seed": 5}})
    result, cases = pytest_session(tmp_path, "scenarios")
    assert result.returncode == 1, result.stdout[-3000:]
    assert cases["b"].find("failure") is not None
    assert cases["a"].find("failure") is None and cases["c"].find("failure") is None
    assert "scenario b failed" in result.stdout
    assert "report.html" in result.stdout


def test_realtime_files_and_the_tests_between_blocks_run_alone(tmp_path: Path) -> None:
    write_session(
        tmp_path,
        {
            "a1": {},
            "a2": {"seed": 4},
            "r": {"clock": "1h = 1s", "threshold": "8h", "loss": 0},
            "z1": {"seed": 6},
        },
    )
    stamp = tmp_path / "between.txt"
    (tmp_path / "scenarios" / "test_b.py").write_text(BETWEEN.format(stamp=str(stamp)))
    # Collected as a1, a2 (a block), the plain test, then z1 before r: the files of a
    # folder that may run ahead go before its realtime ones (a block of one here).
    result, _ = pytest_session(
        tmp_path,
        "scenarios/a1.yaml",
        "scenarios/a2.yaml",
        "scenarios/test_b.py",
        "scenarios/r.yaml",
        "scenarios/z1.yaml",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    reports = tmp_path / "reports"
    between = float(stamp.read_text())
    for name in ("a1", "a2"):
        assert span(reports / name)[1] < between, f"{name} still ran beside the plain test"
    realtime, before = span(reports / "r"), span(reports / "z1")
    assert realtime[0] > before[1], "the realtime file ran beside z1"
    assert before[0] > between


def collected(folder: Path, jobs: str) -> list[str]:
    result, _ = pytest_session(folder, "--collect-only", "scenarios", jobs=jobs, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [line.rsplit("::", 1)[1] for line in result.stdout.splitlines() if "::" in line]


def test_a_folders_realtime_files_go_after_those_that_run_ahead(tmp_path: Path) -> None:
    realtime = {"clock": "1h = 1s", "threshold": "8h", "loss": 0}
    write_session(tmp_path, {"a": {}, "b-real": realtime, "c": {}, "d-real": realtime, "e": {}})
    # Interleaved by name they made blocks of one: a, c and e ran one at a time.
    assert collected(tmp_path, "2") == ["a", "c", "e", "b-real", "d-real"]
    # One at a time, the order makes no difference: the folder's own is kept.
    assert collected(tmp_path, "1") == ["a", "b-real", "c", "d-real", "e"]
    # Collecting runs nothing and makes no run folder: a later run is not named `a-2`.
    reports = tmp_path / "reports"
    assert not reports.exists() or not any(reports.iterdir())


def test_a_session_stopped_at_its_first_failure_stops_what_ran_ahead(tmp_path: Path) -> None:
    long_runs = {f"later{i}": {"seed": 10 + i} for i in range(3)}
    write_session(tmp_path, {"a-fails": {"loss": 0}, **long_runs})
    before = ours()
    result, cases = pytest_session(tmp_path, "-x", "scenarios")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "a-fails" in cases and not set(long_runs) & set(cases)
    assert_nothing_left(before, "a session stopped by -x")
    reported = [n for n in long_runs if (tmp_path / "reports" / n / "report.json").exists()]
    assert len(reported) < len(long_runs), "every run ahead went on to its end"


@pytest.mark.parametrize("value", ["none", "0"])
def test_a_bad_jobs_value_is_a_usage_error(tmp_path: Path, value: str) -> None:
    write_session(tmp_path, {"a": {}})
    result, _ = pytest_session(tmp_path, "scenarios", jobs=value, timeout=120)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"--testbed-jobs {value}" in result.stderr
