"""A mistake in a scenario file or on the command line is one line on stderr and exit 2,
before anything starts: no server, no run folder, no report. The file is blamed, not the
system under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAD = """\
name: t
description: d
settings: {extract_data_stuck_threshold: 8h}
workload: {rate: 600/h, seed: 1}
"""
ALIASES = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)

FILES = {
    "aliases that expand without bound": (ALIASES + "name: bomb\nsteps: *i\n", "expands to more"),
    "a zero settle": (HEAD + "steps:\n  - {at: 1h, settle: 0s}\n", "longer than 0s"),
    "a zero threshold": (
        HEAD.replace("8h}", "0s}") + "steps:\n  - {at: 1h, settle: 1h}\n",
        "longer than 0s",
    ),
    "a zero heartbeat": (
        HEAD.replace("8h}", "8h, heartbeat_interval: 0s}") + "steps:\n  - {at: 1h, settle: 1h}\n",
        "longer than 0s",
    ),
    "an impossible rate": (
        HEAD.replace("600/h", "1000000000/h") + "steps:\n  - {at: 1h, settle: 1h}\n",
        "more than the workload generator",
    ),
    "a step a century away": (HEAD + "steps:\n  - {at: 876000h, settle: 1h}\n", "longest"),
    "a settle past the longest scenario": (
        HEAD + "steps:\n  - {at: 1h, settle: 100000h}\n",
        "longest",
    ),
    "a negative time": (HEAD + "steps:\n  - {at: -1h, kill: icon1a}\n", "not a duration"),
    "a wrong type": (HEAD + "steps:\n  - {at: [1], kill: 5}\n", "not a duration"),
    "an unknown target": (HEAD + "steps:\n  - {at: 1h, kill: icon9z}\n", "unknown target"),
    "an unknown site": (
        HEAD + "steps:\n  - {at: 1h, partition: [site1, site7]}\n",
        "unknown site",
    ),
    "chaos without end": (
        HEAD + "steps:\n  - {at: 1h, chaos: {}, until: 900h, mean_interval: 1s}\n",
        "faults from `at` to `until`",
    ),
}


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testbed", "run", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def assert_refused(result: subprocess.CompletedProcess, home: Path, words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert words in lines[0]
    assert "Traceback" not in result.stderr
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())  # no server


@pytest.mark.parametrize("case", sorted(FILES))
def test_a_malformed_scenario_file_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    text, words = FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    assert_refused(run(tmp_path / "home", str(path), "--out", str(out)), tmp_path / "home", words)
    assert not (out / "history.jsonl").exists()


def test_binary_garbage_and_a_folder_are_refused_in_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 8)
    assert_refused(run(tmp_path / "home", str(garbage)), tmp_path / "home", "not a text file")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    assert_refused(run(tmp_path / "home", str(folder)), tmp_path / "home", "cannot read")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--frobnicate",), "No such option"),
        (("--backend", "nope"), "'--backend'"),
        (("--seed", "many"), "'--seed'"),
        (("--out", "/proc/testbed-cannot-write-here"), "cannot be written"),
    ],
)
def test_a_bad_command_line_is_refused_in_one_line(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    catalog = Path(__file__).resolve().parent.parent / "scenarios" / "normal-operation.yaml"
    assert_refused(run(tmp_path / "home", str(catalog), *args), tmp_path / "home", words)
