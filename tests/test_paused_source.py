"""A paused (SIGSTOPped) data source, end to end on virtual time: it takes no calls while it
is frozen (no event of that span exists), and the ICONs that hear nothing from it have no
session then and vouch for each instant only, so its site does not lag (scenarios/README.md:
"with its data source down, an ICON has no session and vouches for each instant only")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCENARIO = """\
name: paused-source
description: "data source 2 frozen for 2 h, nothing else"
topology: active-standby
clock: virtual
settings: {extract_data_stuck_threshold: 1h}
workload: {rate: 600/h, seed: 5}
steps:
  - {at: 1h, pause: source2}
  - {at: 3h, resume: source2}
  - {at: 4h, settle: 1h}
expect:
  loss: {site1: 0, site2: 0}
  duplicates: 0
  stuck: []
"""
PAUSED, RESUMED = 3600.0, 3 * 3600.0
MINUTE = 60.0


def test_a_paused_source_takes_no_calls_and_its_site_does_not_lag(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIO)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "testbed", "run", "s.yaml", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    site2 = [e["ts"] for e in ledger if e["site"] == "site2"]
    assert [ts for ts in site2 if PAUSED + MINUTE < ts < RESUMED - MINUTE] == []
    assert [ts for ts in site2 if ts > RESUMED]  # it goes on after its resume
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    lags = [
        s["t"] - s["complete_to"]["site2"]
        for s in history
        if s["kind"] == "sample"
        and PAUSED < s["t"] < RESUMED
        and (s.get("complete_to") or {}).get("site2") is not None
    ]
    assert len(lags) > 60
    assert max(lags) <= 3 * MINUTE  # not 2 h behind, as a frozen session's watermark says
