"""The verdict in plain words: built from the checks, it says no more than they do."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from testbed.verdict.checks import Check, Outcome
from testbed.verdict.report import _infomart_table, print_summary
from testbed.verdict.summary import verdict_paragraph


def _outcome(lost: dict, windows: dict, checks: list[Check], **figures: object) -> Outcome:
    data = {"lost_events": lost, "predicted_windows": windows, "duplicates": 0, **figures}
    return Outcome("s", all(c.passed for c in checks), checks, data)


def test_a_long_outage_as_predicted() -> None:
    outcome = _outcome(
        {"site1": 0, "site2": 1870},
        {"site2": [[3600.0, 14400.0]]},
        [Check("loss", True, "ok"), Check("duplicates", True, "ok")],
    )
    assert verdict_paragraph(outcome) == (
        "Site 2 lost 1,870 events, 3h of data (1h to 4h), as the stuck-threshold rule"
        " predicts; nothing doubled. Every check passed."
    )


def test_a_failed_loss_check_is_never_called_as_predicted() -> None:
    outcome = _outcome(
        {"site2": 1870},
        {"site2": [[3600.0, 14400.0]]},
        [Check("loss", False, "site2: 40 events lost outside the window")],
    )
    text = verdict_paragraph(outcome)
    assert "as the stuck-threshold rule predicts" not in text
    assert "The loss check failed: site2: 40 events lost outside the window." in text


def test_duplicates_and_other_failures_are_named() -> None:
    outcome = _outcome(
        {"site1": 0},
        {},
        [Check("loss", True, "ok"), Check("replica", False, "differs")],
        duplicates=3,
    )
    assert verdict_paragraph(outcome) == (
        "No site lost anything, as the rules predict; 3 events doubled. Failed: replica."
    )


def test_a_disaster_loss_names_the_census() -> None:
    outcome = _outcome(
        {"site1": 14},
        {},
        [Check("loss", True, "ok")],
        disaster_census=[{"site": "site1", "lost": 14}],
    )
    assert "lost 14 events in the disaster" in verdict_paragraph(outcome)
    assert "census of the surviving stores" in verdict_paragraph(outcome)


def _active_active(infomart2_passed: bool) -> Outcome:
    infomart1 = {
        "lost_events": {"site1": 0, "site2": 1249},
        "predicted_windows": {"site1": [], "site2": [[3600.0, 14400.0]]},
        "duplicates": 0,
        "as_predicted": True,
        "loss_check": "loss",
    }
    infomart2 = {
        "lost_events": {"site1": 1320, "site2": 0},
        "predicted_windows": {"site1": [[3600.0, 14400.0]], "site2": []},
        "duplicates": 0,
        "as_predicted": infomart2_passed,
        "loss_check": "loss:infomart2",
    }
    checks = [
        Check("loss", True, "ok"),
        Check("loss:infomart2", infomart2_passed, "ok" if infomart2_passed else "site1: 99 more"),
    ]
    return _outcome(
        infomart1["lost_events"],
        infomart1["predicted_windows"],
        checks,
        by_infomart={"infomart1": infomart1, "infomart2": infomart2},
    )


def test_active_active_names_each_info_marts_loss() -> None:
    assert verdict_paragraph(_active_active(infomart2_passed=True)) == (
        "Info Mart 1: site 2 lost 1,249 events, 3h of data (1h to 4h), as the stuck-threshold"
        " rule predicts. Info Mart 2: site 1 lost 1,320 events, 3h of data (1h to 4h), as the"
        " stuck-threshold rule predicts; nothing doubled. Every check passed."
    )


def test_active_active_a_failed_second_info_mart_is_not_called_as_predicted() -> None:
    text = verdict_paragraph(_active_active(infomart2_passed=False))
    assert text.startswith("Info Mart 1: site 2 lost 1,249 events, 3h of data (1h to 4h), as")
    assert "Info Mart 2: site 1 lost 1,320 events, 3h of data (1h to 4h); nothing doubled." in text
    assert "The loss:infomart2 check failed: site1: 99 more." in text
    assert "Every check passed" not in text


def test_active_active_lost_line_and_html_give_each_info_marts_figures(tmp_path: Path) -> None:
    outcome = _active_active(infomart2_passed=True)
    for im in outcome.figures["by_infomart"].values():
        im["predicted_lost_range"] = {
            s: [n, n + 40] if n else [0, 0] for s, n in im["lost_events"].items()
        }
    outcome.figures |= {"rto_s": 1800.0, "rpo_s": 10800.0, "tolerance_s": 420.0}
    console = Console(file=io.StringIO(), width=400)
    print_summary(outcome, tmp_path, console)
    lines = console.file.getvalue().splitlines()
    assert lines[-1] == verdict_paragraph(outcome)
    assert lines[-3].startswith(
        "lost infomart1 {'site1': 0, 'site2': 1249} (predicted site1: 0, site2: 1249-1289);"
        " infomart2 {'site1': 1320, 'site2': 0} (predicted site1: 1320-1360, site2: 0),"
        " duplicates 0,"
    )
    table = _infomart_table(outcome.figures)
    assert "<td>infomart2</td><td>site1</td><td>1,320</td><td>1,320 to 1,360</td>" in table
    assert "loss:infomart2: as predicted" in table
