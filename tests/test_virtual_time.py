"""Virtual time end to end, on real servers: the same file gives the same events lost and
the same stuck and return instants, on an idle machine and on one whose both cores are
busy; the loss check still bites; what the virtual clock cannot run yet is refused in one
line before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

OUTAGE = """\
name: virtual-outage-past-threshold
description: "a slow WAN, then a 3h blackhole against a 2h threshold: site 2 loses 1h"
clock: virtual
settings:
  extract_data_stuck_threshold: 2h
workload:
  rate: 600/h
  seed: 4242
steps:
  - at: 30m
    latency: [site1, site2]    # scenario milliseconds: the proxy holds bytes on the clock
    ms: 150
    jitter: 20
  - at: 30m
    bandwidth: [site1, site2]
    rate: 50
  - at: 1h
    partition: [site1, site2]
    mode: blackhole
  - at: 4h
    heal: [site1, site2]
  - at: 4h
    settle: 2h
expect:
  loss:
    site1: 0
    site2: 1h
  duplicates: 0
  stuck: [site2]
"""
RUNS_IDLE = 2
RUNS_LOADED = 3  # the last of them states a wrong loss: same events, a failed check


def run(tmp_path: Path, text: str, name: str, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "testbed",
            "run",
            str(path),
            "--home",
            str(tmp_path / "home"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ),
    )


def outcome(out: Path) -> tuple[frozenset[str], list[tuple[float, tuple[str, ...]]]]:
    """The events lost (emitted, never a fact) and every instant the stuck sites changed."""
    emitted = {json.loads(line)["id"] for line in (out / "ledger.jsonl").read_text().splitlines()}
    facts = {row[0] for row in json.loads((out / "final.json").read_text())["facts"]}
    changes: list[tuple[float, tuple[str, ...]]] = []
    for line in (out / "history.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] != "sample" or entry.get("stuck_sites") is None:
            continue
        stuck = tuple(sorted(entry["stuck_sites"]))
        if not changes or changes[-1][1] != stuck:
            changes.append((entry["t"], stuck))
    return frozenset(emitted - facts), changes


@pytest.fixture
def both_cores_busy() -> object:
    """Two busy loops, bounded in time, for as long as the test runs."""
    loops = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time\nend = time.time() + 240\nwhile time.time() < end: pass",
            ]
        )
        for _ in range(2)
    ]
    yield
    for loop in loops:
        loop.kill()
        loop.wait()


def test_the_same_file_gives_the_same_verdict_idle_and_loaded(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    results = []
    for index in range(RUNS_IDLE + RUNS_LOADED):
        if index == RUNS_IDLE:
            request.getfixturevalue("both_cores_busy")
        wrong = index == RUNS_IDLE + RUNS_LOADED - 1
        text = OUTAGE.replace("    site2: 1h", "    site2: 2h") if wrong else OUTAGE
        out = tmp_path / f"out{index}"
        result = run(tmp_path, text, f"s{index}", "--out", str(out), "--json")
        assert result.returncode == (1 if wrong else 0), result.stderr[-2000:]
        report = json.loads(result.stdout)
        results.append(outcome(out))
        figures = report["figures"]
        assert figures["clock"] == "virtual"
        assert figures["tolerance_s"] == 60.0  # one heartbeat, nothing on top
        # Left open: each of the two edges within one heartbeat either way, about 40 of
        # site 2's calls at 10 a minute (a realtime clock at 1h = 1s leaves ~140 open).
        either = figures["either_share"]["site2"] * (figures["events"] / 2)
        assert figures["either_share"]["site1"] == 0 and either <= 60
        if wrong:  # the check bites on virtual time: same events, a stated loss they miss
            loss = next(c for c in report["checks"] if c["name"] == "loss")
            assert not loss["passed"] and "expected 2h" in loss["message"]
    lost, changes = results[0]
    assert 500 <= len(lost) <= 700  # about 1h of site 2's calls at 600/h
    assert all(event.startswith("site2-") for event in lost)
    assert [sites for _, sites in changes] == [(), ("site2",), ()]
    for index, other in enumerate(results[1:], start=1):
        assert other == results[0], f"run {index} differs from run 0"


@pytest.mark.parametrize(
    ("change", "args", "expected"),
    [
        ((), ("--backend", "swarm"), "runs on the local and docker backends only"),
        ((), ("--backend", "compose"), "runs on the local and docker backends only"),
        ((), ("--toxiproxy-image", "toxiproxy:2"), "cannot join the virtual clock"),
    ],
)
def test_what_virtual_time_cannot_run_is_refused_in_one_line(
    tmp_path: Path, change: tuple[str, ...], args: tuple[str, ...], expected: str
) -> None:
    text = OUTAGE.replace(*change) if change else OUTAGE
    result = run(tmp_path, text, "refused", *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "runs").exists() or not any(
        (tmp_path / "home" / "runs").iterdir()
    )


def test_virtual_time_is_the_default_and_a_run_may_choose_realtime(tmp_path: Path) -> None:
    from testbed.scenarios.spec import load_scenario, scenario_from_data

    unstated = tmp_path / "unstated.yaml"
    unstated.write_text(OUTAGE.replace("clock: virtual\n", ""))
    assert load_scenario(unstated).factor == 0.0  # a file that names no clock: virtual
    assert load_scenario(unstated, clock="1h = 4s").factor == 900.0  # --clock "1h = 4s"
    assert load_scenario("wan-outage-long").factor == 0.0  # the catalog
    # A live environment (a Chaos Toolkit experiment's settings) keeps the realtime clock.
    import yaml

    data = yaml.safe_load(OUTAGE.replace("clock: virtual\n", ""))
    data["settings"]["extract_data_stuck_threshold"] = "8h"
    data["expect"]["loss"]["site2"] = 0
    assert scenario_from_data(data, "experiment").factor == 3600.0
