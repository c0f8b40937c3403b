"""A site lost in a disaster and not retired: what a surviving store still holds of it
*waits* for the procedure; it is not lost. Judged on a real run's output, with the last
events before the failure moved from facts to staging, as they are when the site's last
heartbeat did not cover them (a realtime run does that by chance; virtual time never)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.verdict.checks import evaluate
from testbed.verdict.summary import verdict_paragraph

SCENARIO = """\
name: standby-site-lost-and-not-retired
description: "site 2 lost; nobody retires it"
topology: active-standby
clock: virtual
settings: {extract_data_stuck_threshold: 2h}
workload: {rate: 600/h, seed: 41}
steps:
  - {at: 1h, fail-site: site2}
  - {at: 1h, settle: 3h}
expect:
  duplicates: 0
  stuck_at_end: [site2]
"""
HELD_BACK = 5


@pytest.fixture(scope="module")
def lost_site_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("waiting")
    (folder / "s.yaml").write_text(SCENARIO)
    out = folder / "out"
    result = subprocess.run(
        [sys.executable, "-m", "testbed", "run", str(folder / "s.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def held_back(run: Path, tmp_path: Path, stop: str, retired: bool = False) -> Path:
    """A copy of the run in which site 2's last facts before the failure were never loaded
    and stopped at `stop` instead."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("history.jsonl", "ledger.jsonl"):
        (out / name).write_text((run / name).read_text())
    final = json.loads((run / "final.json").read_text())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    census = next(e["census"] for e in history if e["kind"] == "dr" and e.get("census"))
    saved = [
        row
        for row in final["facts"]
        if row[1] == "site2" and row[2] <= census["last_ts"] and row[0] not in census["lost"]
    ]
    moved = {row[0] for row in sorted(saved, key=lambda r: r[2])[-HELD_BACK:]}
    final["facts"] = [row for row in final["facts"] if row[0] not in moved]
    final["fact_contents"] = [row for row in final["fact_contents"] if row[0] not in moved]
    for event_id in moved:
        final["lineage"][event_id] = {"site": "site2", "facts": 0, "stopped_at": stop}
    if stop.startswith("GIM staging"):
        final["leftover"]["staged"] = {"site2": HELD_BACK}
    (out / "final.json").write_text(json.dumps(final))
    if retired:
        entry = {
            "kind": "dr",
            "t": census["last_ts"] + 60,
            "wall": 0,
            "procedure": "activate-gim",
            "site": "site1",
            "gim": "gim1",
            "infomart": "infomart1",
            "retired_sites": ["site2"],
            "forced": False,
        }
        with (out / "history.jsonl").open("a") as log:
            log.write(json.dumps(entry) + "\n")
    return out


def test_what_a_surviving_store_holds_of_a_site_not_retired_waits(
    lost_site_run: Path, tmp_path: Path
) -> None:
    outcome = evaluate(
        held_back(lost_site_run, tmp_path, "GIM staging: beyond the transform boundary")
    )
    assert outcome.passed, [c.message for c in outcome.checks if not c.passed]
    assert outcome.figures["waiting_events"] == {"site2": HELD_BACK}
    assert outcome.figures["waiting_release"] == "activate-gim site1"
    paragraph = verdict_paragraph(outcome)
    assert f"Site 2 was lost at 1h and is not retired: {HELD_BACK} of its events wait" in paragraph
    assert "`activate-gim site1` releases them" in paragraph


def test_what_was_dropped_does_not_wait(lost_site_run: Path, tmp_path: Path) -> None:
    outcome = evaluate(
        held_back(lost_site_run, tmp_path, "GIM: discarded by the stuck-threshold rule")
    )
    failed = {c.name for c in outcome.checks if not c.passed}
    assert {"loss", "disaster-loss"} <= failed
    assert outcome.figures["waiting_events"] == {}


def test_once_the_site_is_retired_nothing_waits(lost_site_run: Path, tmp_path: Path) -> None:
    out = held_back(lost_site_run, tmp_path, "GIM staging: beyond the transform boundary", True)
    outcome = evaluate(out)
    failed = {c.name for c in outcome.checks if not c.passed}
    assert {"loss", "disaster-loss"} <= failed  # the procedure ran: they should be facts
    assert outcome.figures["waiting_events"] == {}
