"""Every check can fail: a real run passes, and the same run with one thing broken on
purpose (a corrupted table's contents, a wrong mark, something left behind) fails exactly
the check that guards it.

The checks are pure functions of a run's folder, so corrupting what the folder recorded of
a table is corrupting the table as far as the verdict can know. The marks check is also
shown to catch a mark really moved too far in a live Info Mart.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.deployment import Deployment
from testbed.operations.consistency import marks
from testbed.scenarios.engine import ScenarioRun
from testbed.scenarios.spec import load_scenario
from testbed.topology import INFOMART_DATABASE
from testbed.verdict.checks import Outcome, evaluate

RUN = """\
name: checks-bite
description: "a short reset outage and an ICON killed and restarted: every check passes"
clock: 1h = 1s
settings:
  extract_data_stuck_threshold: 8h
workload:
  rate: 900/h
  seed: 5
steps:
  - at: 1h
    partition: [site1, site2]
  - at: 2h
    heal: [site1, site2]
  - at: 2h30m
    kill: icon1b
  - at: 3h
    start: icon1b
  - at: 3h
    settle: 2h
expect:
  loss: {site1: 0, site2: 0}
  duplicates: 0
  replica: consistent
"""


def play(tmp_path_factory: pytest.TempPathFactory, name: str, text: str) -> Path:
    """Run a scenario file's text once; its run folder."""
    folder = tmp_path_factory.mktemp(name)
    (folder / f"{name}.yaml").write_text(text)
    ScenarioRun(
        load_scenario(folder / f"{name}.yaml"), folder / "run", home=str(folder / "home")
    ).run()
    return folder / "run"


@pytest.fixture(scope="module")
def passed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return play(tmp_path_factory, "checks-bite", RUN)


def broken(passed_run: Path, tmp_path: Path, change: Callable[[Path], None]) -> Outcome:
    copy = tmp_path / "run"
    shutil.copytree(passed_run, copy)
    change(copy)
    return evaluate(copy)


def edit_final(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        final = json.loads((folder / "final.json").read_text())
        change(final)
        (folder / "final.json").write_text(json.dumps(final))

    return apply


def failed(outcome: Outcome) -> list[str]:
    return [c.name for c in outcome.checks if not c.passed]


def test_the_untouched_run_passes_every_check(passed_run: Path) -> None:
    outcome = evaluate(passed_run)
    assert failed(outcome) == []
    names = {c.name for c in outcome.checks}
    assert {"loss", "marks", "contents", "residue", "replica", "hwm-monotonic"} <= names


def test_a_fact_whose_payload_differs_from_its_event_fails_contents(
    passed_run: Path, tmp_path: Path
) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        final["fact_contents"][7][3] = "call 7 at nowhere"

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["contents"]


def test_a_fact_with_the_wrong_site_or_time_fails_contents(
    passed_run: Path, tmp_path: Path
) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        final["fact_contents"][3][2] += 60.0

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["contents"]


def test_a_mark_past_what_the_idb_committed_fails_marks(passed_run: Path, tmp_path: Path) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        source = next(iter(final["marks"]))
        final["marks"][source]["hwm"] = final["marks"][source]["idb_xmin"] + 1000

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["marks"]


def test_a_committed_row_below_a_mark_never_taken_fails_marks(
    passed_run: Path, tmp_path: Path
) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        source = next(iter(final["marks"]))
        final["marks"][source]["skipped"] = ["site1-000000042"]
        final["marks"][source]["skipped_count"] = 1

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["marks"]


@pytest.mark.parametrize(
    "leftover",
    [
        {"queued_events": {"icon2b": 12}, "staged": {}, "stuck": []},
        {"queued_events": {}, "staged": {"site2": 40}, "stuck": []},
        {"queued_events": {}, "staged": {}, "stuck": ["site2"]},
    ],
    ids=["queue-not-drained", "rows-staged", "site-still-stuck"],
)
def test_anything_left_behind_fails_residue(
    passed_run: Path, tmp_path: Path, leftover: dict[str, Any]
) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        final["leftover"] = leftover

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["residue"]


def test_a_standby_with_other_events_than_its_primary_reported_fails_replica(
    passed_run: Path, tmp_path: Path
) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        final["replica"]["pairs"][0]["standby_events"]["md5"] = "0" * 32

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["replica"]


def test_a_fact_missing_from_the_info_mart_fails_loss(passed_run: Path, tmp_path: Path) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        gone = final["facts"].pop(10)[0]
        final["fact_contents"] = [r for r in final["fact_contents"] if r[0] != gone]

    assert "loss" in failed(broken(passed_run, tmp_path, edit_final(corrupt)))


def test_a_fact_counted_twice_fails_duplicates(passed_run: Path, tmp_path: Path) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        final["facts"].append(final["facts"][0])

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["duplicates"]


def test_a_split_whose_info_marts_hold_the_same_rows_is_not_diverged(
    passed_run: Path, tmp_path: Path
) -> None:
    """`diverged` passes only for Info Marts that really differ, and `single-active` with
    a second GIM forced into service only when such a split is reported."""

    def fake_split(folder: Path) -> None:
        final = json.loads((folder / "final.json").read_text())
        final["replica"]["divergence"] = [
            {
                "promoted": "infomart2",
                "old_primary": "infomart1",
                "diverged": False,
                "fact_rows_only_in": {"infomart1": 0, "infomart2": 0},
            }
        ]
        (folder / "final.json").write_text(json.dumps(final))
        history = (folder / "history.jsonl").read_text().splitlines()
        forced = {"t": 9000.0, "wall": 0, "kind": "dr-forced", "procedure": "activate-gim"}
        sample = json.loads(next(h for h in reversed(history) if '"kind": "sample"' in h))
        sample.update(active_gims=["gim1", "gim2"], states={"gim1": "running", "gim2": "running"})
        history += [json.dumps(forced), json.dumps(sample)]
        (folder / "history.jsonl").write_text("\n".join(history) + "\n")
        run = json.loads(history[0])
        run["expect"]["replica"] = "diverged"
        history[0] = json.dumps(run)
        (folder / "history.jsonl").write_text("\n".join(history) + "\n")

    assert sorted(failed(broken(passed_run, tmp_path, fake_split))) == ["replica", "single-active"]


def test_marks_catch_a_mark_moved_too_far_in_a_live_info_mart(
    testbed_deployment: Deployment, testbed_pipeline: Any
) -> None:
    """A real wrong mark: GIM stopped, its mark for one source moved past rows the IDB
    holds; the rows below it that were never taken are named."""
    pipeline = testbed_pipeline
    pipeline.clock.sleep(1800)
    pipeline.settle()
    pipeline.gims["gim1"].stop()
    infomart = testbed_deployment.server("infomart1")
    assert all(m["skipped_count"] == 0 for m in marks(testbed_deployment, "infomart1").values())
    idb = testbed_deployment.server("idb2")
    idb.execute(
        "INSERT INTO events (event_id, site, ts, payload, icon, queue_seq)"
        " VALUES ('site2-999999999', 'site2', 1.0, 'never taken', 'icon2a', 0)",
        dbname="icon2a",
    )
    moved = int(idb.scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")) + 100_000
    infomart.execute(
        "UPDATE gim_source SET hwm = %s WHERE source = 'icon2a@idb2'",
        (moved,),
        dbname=INFOMART_DATABASE,
    )
    found = marks(testbed_deployment, "infomart1")["icon2a@idb2"]
    assert found["skipped"] == ["site2-999999999"]
    assert found["hwm"] > found["idb_xmin"]


def edit_history(change: Callable[[list[dict[str, Any]]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "history.jsonl"
        history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        change(history)
        path.write_text("".join(json.dumps(e) + "\n" for e in history))

    return apply


def test_a_mark_moving_back_fails_hwm_monotonic(passed_run: Path, tmp_path: Path) -> None:
    def corrupt(history: list[dict[str, Any]]) -> None:
        samples = [e for e in history if e["kind"] == "sample" and e.get("hwm_by_gim")]
        marks = samples[-1]["hwm_by_gim"]["gim1"]
        source = next(iter(marks))
        marks[source] = 1

    assert failed(broken(passed_run, tmp_path, edit_history(corrupt))) == ["hwm-monotonic"]


def test_a_step_that_failed_fails_completed(passed_run: Path, tmp_path: Path) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        final["failures"] = ["settle at 10800s: reporting did not catch up within 7200s"]

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["completed"]


@pytest.mark.parametrize(
    ("key", "value", "check"),
    [
        ("stuck", ["site2"], "stuck"),
        ("rto", 1.0, "rto"),
        ("loss", {"site2": {"events": 50}}, "loss"),
    ],
)
def test_an_expectation_the_run_does_not_meet_fails_its_check(
    passed_run: Path, tmp_path: Path, key: str, value: Any, check: str
) -> None:
    def corrupt(history: list[dict[str, Any]]) -> None:
        history[0]["expect"][key] = value

    assert failed(broken(passed_run, tmp_path, edit_history(corrupt))) == [check]


def test_another_info_mart_with_other_events_fails_converged(
    passed_run: Path, tmp_path: Path
) -> None:
    def corrupt(final: dict[str, Any]) -> None:
        final["other_infomarts"] = {"infomart9": sorted({r[0] for r in final["facts"]})[5:]}

    assert failed(broken(passed_run, tmp_path, edit_final(corrupt))) == ["converged"]


def test_an_event_counted_twice_in_another_info_mart_fails_duplicates(
    passed_run: Path, tmp_path: Path
) -> None:
    """Active-active: the second Info Mart holds the same events, one of them twice."""

    def corrupt(final: dict[str, Any]) -> None:
        ids = sorted(r[0] for r in final["facts"])
        final["other_infomarts"] = {"infomart9": sorted([*ids, ids[0]])}

    outcome = broken(passed_run, tmp_path, edit_final(corrupt))
    assert failed(outcome) == ["duplicates"]
    (check,) = (c for c in outcome.checks if c.name == "duplicates")
    assert "infomart9: 1" in check.message
    assert outcome.figures["by_infomart"]["infomart9"]["duplicates"] == 1


def test_a_census_that_counts_loaded_events_lost_fails_disaster_loss(
    passed_run: Path, tmp_path: Path
) -> None:
    """A census claiming site 1 events were nowhere, though they were loaded: and those
    events were written by a healthy partner, so the census's own bound objects too."""

    def corrupt(history: list[dict[str, Any]]) -> None:
        ledger = [json.loads(line) for line in (tmp_path / "run" / "ledger.jsonl").open()]
        early = [e["id"] for e in ledger if e["site"] == "site1"][:5]
        end = history[-1]["t"]
        census = {
            "site": "site1",
            "events": 5,
            "last_ts": end,
            "in_surviving_idbs": 0,
            "only_in_surviving_infomart": 0,
            "lost": early,
        }
        history.append(
            {"t": end, "kind": "dr", "procedure": "fail-site", "site": "site1", "census": census}
        )

    outcome = broken(passed_run, tmp_path, edit_history(corrupt))
    check = next(c for c in outcome.checks if c.name == "disaster-loss")
    assert not check.passed
    assert "census counted lost were loaded" in check.message
    assert "healthy partner" in check.message


LONG = """\
name: checks-bite-long
description: "an outage 2h30m longer than the threshold: site 2 loses a 2h30m window"
clock: 1h = 1s
settings:
  extract_data_stuck_threshold: 3h
workload:
  rate: 900/h
  seed: 5
steps:
  - at: 1h
    partition: [site1, site2]
    mode: blackhole
  - at: 6h30m
    heal: [site1, site2]
  - at: 6h30m
    settle: 2h
expect:
  loss: {site1: 0, site2: 2h30m}
  duplicates: 0
"""


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return play(tmp_path_factory, "checks-bite-long", LONG)


def _heal_later(by: float) -> Callable[[list[dict[str, Any]]], None]:
    """The heal step as if it had begun and ended `by` later (moving its end alone would
    make it a slow heal, whose return the model rightly leaves uncertain in between)."""

    def corrupt(history: list[dict[str, Any]]) -> None:
        for entry in history:
            if entry["kind"] in ("step", "step-done") and entry["step"]["verb"] == "heal":
                entry["t"] += by

    return corrupt


def test_a_stated_window_is_the_rules_on_the_timeline_as_written(
    long_run: Path, tmp_path: Path
) -> None:
    """The stated 2h30m holds however long the heal took to apply: the report shows that lag
    and the window as planned. A wrong stated window still fails."""
    outcome = evaluate(long_run)
    assert failed(outcome) == []
    heal = next(lag for lag in outcome.figures["step_lags"] if lag["verb"] == "heal")
    assert heal["lag_s"] >= 0 and heal["lag_wall_s"] == pytest.approx(heal["lag_s"] / 3600)
    (planned,) = outcome.figures["planned_windows"]["site2"]
    assert planned[1] - planned[0] == pytest.approx(9000, abs=outcome.figures["tolerance_s"])

    def wrong(history: list[dict[str, Any]]) -> None:
        history[0]["expect"]["loss"]["site2"] = {"window": 10800.0}

    assert failed(broken(long_run, tmp_path, edit_history(wrong))) == ["loss"]


def test_events_are_judged_on_the_timeline_as_it_took_effect(
    long_run: Path, tmp_path: Path
) -> None:
    """Had the heal taken effect 30 min later, the rules would lose 30 min more: the
    events the run loaded in those 30 min fail the loss check, though the stated window,
    which is about the timeline as written, still agrees."""
    outcome = broken(long_run, tmp_path, edit_history(_heal_later(1800.0)))
    assert failed(outcome) == ["loss"]
    loss = next(c for c in outcome.checks if c.name == "loss")
    assert "events loaded that the rules say are lost" in loss.message
    # The stated window agrees with the timeline as written; as it took effect, 30 min more.
    assert "to 2h39m on the timeline as written" in loss.message
    took = re.search(r"written, (\d+)h(\d+)m\d*s? to .* as it took effect", loss.message)
    assert took and int(took[1]) * 60 + int(took[2]) >= 2 * 60 + 55, loss.message
