"""A site's completeness from what each member's heartbeats vouch for (DESIGN.md section 1:
a member that missed calls proves completeness only from when it caught up; the gap is
covered by its partner). Pure functions of GIM, checked on hand-made spans."""

from __future__ import annotations

from pathlib import Path

from testbed.pipeline.gim import advance_completeness, merge_spans
from testbed.pipeline.workload import DeliveryLog, Event

H = 3600.0


def test_a_member_that_held_everything_moves_the_site_on() -> None:
    assert advance_completeness(2 * H, [[(0.0, 5 * H)], []]) == 5 * H


def test_a_restarted_member_proves_nothing_before_its_restart() -> None:
    """ICON 1a missed [1h, 3h); its partner's copies stop at 2h (out of reach since)."""
    icon1a = [(3 * H, 9 * H)]
    icon1b = [(0.0, 2 * H)]
    assert advance_completeness(2 * H, [icon1a, icon1b]) == 2 * H


def test_the_partner_heard_again_releases_the_site() -> None:
    """The partner's backlog arrives: it held [2h, 14h), and ICON 1a's record joins on."""
    icon1a = [(3 * H, 14 * H)]
    icon1b = [(0.0, 14 * H - 60)]
    assert advance_completeness(2 * H, [icon1a, icon1b]) == 14 * H


def test_every_member_heard_from_later_only_jumps_the_hole_none_holds() -> None:
    """Both missed [2h, 3h): each vouches from its own return; nothing lies between."""
    icon1a = [(3 * H, 9 * H)]
    icon1b = [(4 * H, 9 * H)]
    assert advance_completeness(2 * H, [icon1a, icon1b]) == 9 * H


def test_a_member_not_heard_from_again_may_hold_the_hole() -> None:
    assert advance_completeness(2 * H, [[(3 * H, 9 * H)], []]) == 2 * H


def test_first_heard_starts_where_any_member_vouches_from() -> None:
    assert advance_completeness(None, [[(0.0, 60.0)], []]) == 60.0
    assert advance_completeness(None, [[], []]) is None


def test_instants_without_a_session_keep_the_first_and_last_of_a_run() -> None:
    """An ICON with no source session vouches for each instant only: those say "heard anew
    from here", and only the run's ends matter."""
    spans = merge_spans([], [(60.0, 60.0), (120.0, 120.0), (180.0, 180.0)])
    assert spans == [(60.0, 60.0), (180.0, 180.0)]
    assert merge_spans(spans, [(240.0, 240.0), (240.0, 300.0)]) == [
        (60.0, 60.0),
        (180.0, 180.0),
        (240.0, 300.0),
    ]
    assert merge_spans([(0.0, 60.0)], [(0.0, 120.0)]) == [(0.0, 120.0)]


def test_a_restarted_source_keeps_the_vouching_start_of_an_icon_that_took_its_ledger(
    tmp_path: Path,
) -> None:
    """A source down emits nothing: an ICON that took its ledger's last event holds all it
    ever emitted, and goes on vouching from where it did; one that missed the last batch
    (or was never heard) vouches from the restart."""
    log = DeliveryLog(tmp_path / "deliveries.jsonl")
    assert log.vouching(["icon1a", "icon1b"], [], start=500.0) == {"icon1a": 0.0, "icon1b": 0.0}
    first = [
        Event("site1-000000000", "site1", 10.0, "x"),
        Event("site1-000000001", "site1", 20.0, "y"),
    ]
    last = [Event("site1-000000002", "site1", 70.0, "z")]
    log.record(first, "icon1a", True, 0.0)
    log.record(first, "icon1b", True, 0.0)
    log.record(last, "icon1a", True, 0.0)
    log.record(last, "icon1b", False, 0.0)
    vouch = log.vouching(["icon1a", "icon1b", "icon1c"], [*first, *last], start=500.0)
    assert vouch == {"icon1a": 0.0, "icon1b": 500.0, "icon1c": 500.0}
