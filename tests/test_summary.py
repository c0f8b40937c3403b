"""The verdict in plain words: built from the checks, it says no more than they do."""

from __future__ import annotations

from testbed.verdict.checks import Check, Outcome
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
