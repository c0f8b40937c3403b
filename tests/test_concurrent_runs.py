"""Four runs at once on one machine, sharing one data folder: each gets ports no other run
holds (an ICON binds its port again at every restart), and each passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCENARIO = """\
name: concurrent-{index}
description: "ICONs restarted while three other runs start and stop their own"
clock: virtual
settings: {{extract_data_stuck_threshold: 2h}}
workload: {{rate: 600/h, seed: {index}}}
steps:
  - {{at: 20m, kill: icon1a}}
  - {{at: 30m, start: icon1a}}
  - {{at: 40m, kill: icon2b}}
  - {{at: 50m, start: icon2b}}
  - {{at: 1h, settle: 30m}}
expect:
  loss: {{site1: 0, site2: 0}}
  duplicates: 0
"""


def test_four_runs_at_once_each_pass(tmp_path: Path) -> None:
    runs = []
    for index in range(4):
        path = tmp_path / f"s{index}.yaml"
        path.write_text(SCENARIO.format(index=index))
        runs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "testbed",
                    "run",
                    str(path),
                    "--home",
                    str(tmp_path / "home"),
                    "--out",
                    str(tmp_path / f"out{index}"),
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ),
            )
        )
    for index, run in enumerate(runs):
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, f"run {index}: {err[-2000:]}"
        assert json.loads(out)["passed"], f"run {index}"
        assert "already in use" not in err
