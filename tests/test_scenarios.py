"""Scenario files as users write them: typos are one line and exit 2; a wrong expectation
fails with a clear message and exit 1; chaos replays exactly; reports re-render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.errors import InvalidFile
from testbed.history import of_kind, read_history
from testbed.scenarios.spec import load_scenario

SHORT = """\
name: short-outage
description: "a one-hour outage, well under the threshold"
clock: 1h = 1s
settings:
  extract_data_stuck_threshold: 8h
workload:
  rate: 600/h
  seed: 3
steps:
  - at: 1h
    partition: [site1, site2]
    mode: reset
  - at: 2h
    heal: [site1, site2]
  - at: 2h
    settle: 2h
expect:
  loss:
    site1: 0
    site2: 0
  duplicates: 0
"""


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=dict(os.environ),
    )


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "partition: [site1, site2]",
            "partiton: [site1, site2]",
            r"line 11: steps\[0\]\.partiton: unknown step 'partiton'",
        ),
        (
            "partition: [site1, site2]",
            "partition: [site1, site9]",
            r"line 11: steps\[0\]\.partition: unknown site 'site9'",
        ),
        (
            "  - at: 2h\n    heal",
            "  - at: 2x\n    heal",
            r"line 13: steps\[1\]\.at: '2x' is not a duration",
        ),
        ("mode: reset", "mode: drop", r"line 12: steps\[0\]\.mode: 'drop' is not one of"),
        ("  duplicates: 0", "  duplicate: 0", r"line 21: expect\.duplicate: unknown field"),
        ("    site2: 0", "    site7: 0", r"line 20: expect\.loss\.site7: unknown field"),
    ],
)
def test_a_typo_is_one_line_naming_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = write(tmp_path, SHORT.replace(old, new))
    with pytest.raises(InvalidFile, match=expected):
        load_scenario(path)


def test_a_typo_exits_2_before_anything_runs(tmp_path: Path) -> None:
    path = write(tmp_path, SHORT.replace("heal:", "heel:"))
    result = cli("run", str(path), "--home", str(tmp_path / "home"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"{path}, line 14: steps[1].heel: unknown step 'heel'" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_scenario_name_lists_the_catalog(tmp_path: Path) -> None:
    result = cli("run", "no-such-scenario", "--home", str(tmp_path))
    assert result.returncode == 2
    assert "wan-outage-long" in result.stderr


def test_list_shows_the_catalog() -> None:
    result = cli("list")
    assert result.returncode == 0
    for name in ("normal-operation", "wan-outage-short", "wan-outage-long", "flapping-wan"):
        assert name in result.stdout


def test_a_wrong_expectation_fails_with_a_clear_message(tmp_path: Path) -> None:
    path = write(tmp_path, SHORT.replace("    site2: 0", "    site2: 3h"))
    out = tmp_path / "report"
    result = cli("run", str(path), "--out", str(out), "--json", "--home", str(tmp_path / "h"))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is False
    loss = next(c for c in report["checks"] if c["name"] == "loss")
    assert loss["passed"] is False
    assert "site2: lost window 0s (the rules give 0s on the timeline as written" in loss["message"]
    assert "expected 3h" in loss["message"]
    assert {c["name"] for c in report["checks"] if c["passed"]} >= {"duplicates", "residue"}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1
    # The page leads with the verdict in plain words, failure and reason included.
    lead = page.split("<p class=verdict>")[1].split("</p>")[0]
    assert lead.startswith("No site lost anything;") and "The loss check failed" in lead

    again = cli("report", str(out), "--json")
    assert again.returncode == 1
    assert json.loads(again.stdout)["checks"] == report["checks"]


CHAOS = SHORT.replace(
    """  - at: 1h
    partition: [site1, site2]
    mode: reset
  - at: 2h
    heal: [site1, site2]
""",
    """  - at: 30m
    chaos:
    until: 3h
    seed: 5
    mean_interval: 30m
    faults: [partition, latency, kill]
""",
).replace("at: 2h\n    settle", "at: 3h\n    settle")


def test_a_chaos_run_replays_exactly_from_its_history(tmp_path: Path) -> None:
    path = write(tmp_path, CHAOS)
    first = cli(
        "run",
        str(path),
        "--seed",
        "99",
        "--out",
        str(tmp_path / "a"),
        "--home",
        str(tmp_path / "h"),
    )
    assert first.returncode == 0, first.stdout + first.stderr
    history = tmp_path / "a" / "history.jsonl"
    schedule = next(of_kind(read_history(history), "chaos-schedule"))["steps"]
    assert len(schedule) >= 3
    second = cli(
        "run",
        str(path),
        "--replay",
        str(history),
        "--out",
        str(tmp_path / "b"),
        "--home",
        str(tmp_path / "h"),
    )
    assert second.returncode == 0, second.stdout + second.stderr
    replayed = next(of_kind(read_history(tmp_path / "b" / "history.jsonl"), "chaos-schedule"))
    assert replayed["steps"] == schedule
    played = [e["step"] for e in of_kind(read_history(tmp_path / "b" / "history.jsonl"), "step")]
    assert [s for s in played if s in schedule] == schedule


@pytest.mark.parametrize(
    ("clock", "why"),
    [
        ("1h = 0s", "the wall side must be longer than zero"),
        ("1d = 1s", "more than 5% of the 8h extract_data_stuck_threshold"),
    ],
)
def test_a_clock_too_fast_to_judge_is_refused_in_one_line(
    tmp_path: Path, clock: str, why: str
) -> None:
    """`1h = 0s` used to run for ever; at 1d = 1s the tolerance swallowed the windows."""
    path = write(tmp_path, SHORT.replace("clock: 1h = 1s", f"clock: {clock}"))
    done = cli("run", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert why in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_stated_window_the_tolerance_would_swallow_is_refused(tmp_path: Path) -> None:
    text = SHORT.replace("    site2: 0", "    site2: 5m")
    with pytest.raises(InvalidFile, match="loss window stated for site2"):
        load_scenario(write(tmp_path, text))


def test_the_report_states_the_tolerance_as_a_formula(tmp_path: Path) -> None:
    done = cli("run", str(write(tmp_path, SHORT)), "--out", str(tmp_path / "out"), "--json")
    figures = json.loads(done.stdout)["figures"]
    assert figures["tolerance_s"] == 420.0
    assert figures["tolerance_share_of_threshold"] <= 0.02
    assert "heartbeat 1m" in figures["tolerance_formula"]
