"""The reference model on recorded histories: what the documented rules say is lost.

Pure functions of a history, so each rule is checked here without servers; the scenario
tests and `testbed fuzz` check that the stubs obey the same rules on real ones.
"""

from __future__ import annotations

from typing import Any

import pytest

from testbed.topology import load_topology
from testbed.verdict.prediction import SLOW_WAN, Prediction, predict, predict_all

H = 3600.0
M = 60.0
THRESHOLD = 8 * H
TOL = 7 * 60.0


def step(t: float, verb: str, value: Any = None, **options: Any) -> dict[str, Any]:
    return {"t": t, "kind": "step", "step": {"verb": verb, "value": value, "options": options}}


def end(t: float) -> dict[str, Any]:
    return {"t": t, "kind": "final-settle"}


def outage(start: float, stop: float) -> list[dict[str, Any]]:
    return [step(start, "partition", ["site1", "site2"]), step(stop, "heal", ["site1", "site2"])]


def windows(history: list[dict[str, Any]], topology: str = "active-standby") -> dict:
    prediction = predict(load_topology(topology), history, THRESHOLD, TOL)
    return {site: w for site, w in prediction.windows.items() if w}


def test_an_outage_longer_than_the_threshold_loses_outage_minus_threshold() -> None:
    history = [*outage(1 * H, 12 * H), end(15 * H)]
    assert windows(history) == {"site2": [(1 * H, 4 * H)]}


def test_gim_down_longer_than_the_threshold_with_every_idb_reachable_loses_nothing() -> None:
    history = [
        step(1 * H, "kill", target="gim1"),
        step(12 * H, "start", target="gim1"),
        end(15 * H),
    ]
    assert windows(history) == {}


@pytest.mark.parametrize("target", ["gim1", "infomart1"])
def test_an_outage_no_gim_in_service_saw_past_the_threshold_is_a_delay(target: str) -> None:
    history = [
        *outage(1 * H, 12 * H),
        step(2 * H, "stop", target=target),
        step(13 * H, "start", target=target),
        end(16 * H),
    ]
    assert windows(history) == {}


def test_a_gim_back_after_the_heal_judges_the_return_then() -> None:
    """Stuck while GIM ran (at 9h), GIM gone at 10h, back at 14h: the site returns at 14h."""
    history = [
        *outage(1 * H, 12 * H),
        step(10 * H, "kill", target="gim1"),
        step(14 * H, "start", target="gim1"),
        end(17 * H),
    ]
    assert windows(history) == {"site2": [(1 * H, 6 * H)]}


def test_a_gim_restarted_mid_outage_sees_the_lag_from_the_outage_start() -> None:
    history = [
        *outage(1 * H, 12 * H),
        step(2 * H, "pause", target="gim1"),
        step(10 * H, "resume", target="gim1"),
        end(15 * H),
    ]
    assert windows(history) == {"site2": [(1 * H, 4 * H)]}


def test_a_frozen_member_is_a_down_member() -> None:
    history = [
        step(1 * H, "kill", target="icon2a"),
        step(2 * H, "pause", target="icon2b"),
        step(3 * H, "resume", target="icon2b"),
        step(4 * H, "start", target="icon2a"),
        end(6 * H),
    ]
    assert windows(history) == {"site2": [(2 * H, 3 * H)]}


def test_a_one_way_partition_cuts_the_link_like_a_two_way_one() -> None:
    history = [
        step(1 * H, "partition", ["site1", "site2"], direction="site2->site1", mode="blackhole"),
        step(12 * H, "heal", ["site1", "site2"]),
        end(15 * H),
    ]
    assert windows(history) == {"site2": [(1 * H, 4 * H)]}


def test_a_gap_stuck_only_within_the_tolerance_is_ambiguous_as_a_whole() -> None:
    """GIM comes back two minutes before the heal: the stub may not have judged by then."""
    history = [
        *outage(1 * H, 12 * H),
        step(2 * H, "stop", target="gim1"),
        step(12 * H - 120, "start", target="gim1"),
        end(15 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL)
    assert prediction.windows["site2"] == []
    assert prediction.verdict("site2", 2 * H) == "either"
    assert prediction.verdict("site2", 5 * H) == "kept"


def test_active_active_predicts_each_info_mart_on_its_own() -> None:
    history = [
        *outage(1 * H, 12 * H),
        step(2 * H, "pause", target="gim2"),
        step(13 * H, "resume", target="gim2"),
        end(16 * H),
    ]
    predictions = predict_all(load_topology("active-active"), history, THRESHOLD, TOL)
    gim1, gim2 = predictions["gim1"], predictions["gim2"]
    assert (gim1.infomart, gim2.infomart) == ("infomart1", "infomart2")
    assert gim1.windows["site2"] == [(1 * H, 4 * H)]  # gim1 saw site 2 stuck
    assert gim2.windows["site1"] == []  # gim2 was frozen all along: a delay only


def test_paused_parts_resumed_at_cleanup_end_their_downtime_there() -> None:
    history = [
        step(1 * H, "kill", target="icon2a"),
        step(2 * H, "pause", target="icon2b"),
        {"t": 3 * H, "kind": "cleanup-resume", "names": ["icon2b"]},
        end(6 * H),
    ]
    assert windows(history) == {"site2": [(2 * H, 3 * H)]}


def test_a_gim_back_in_service_shortly_before_the_heal_may_not_have_heard_every_source() -> None:
    """Back at 11h: a source behind a black hole answers only after its deadlines (priming,
    2h at this clock), past the heal: whether it was judged stuck is open."""
    history = [
        step(1 * H, "partition", ["site1", "site2"], mode="blackhole"),
        step(12 * H, "heal", ["site1", "site2"]),
        step(2 * H, "kill", target="gim1"),
        step(11 * H, "start", target="gim1"),
        end(15 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL, priming=2 * H)
    assert prediction.windows["site2"] == []
    assert prediction.verdict("site2", 2 * H) == "either"
    settled = predict(load_topology("active-standby"), history, THRESHOLD, TOL, priming=0.5 * H)
    assert settled.windows["site2"] == [(1 * H, 4 * H)]


def test_priming_applies_only_where_a_source_would_hang() -> None:
    """The same timeline with the WAN refusing instead of black-holing: the unreachable
    source fails at once, so the GIM back at 11h hears every source within a cycle, and the
    loss is definite."""
    history = [
        *outage(1 * H, 12 * H),
        step(2 * H, "kill", target="gim1"),
        step(11 * H, "start", target="gim1"),
        end(15 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL, priming=2 * H)
    assert prediction.windows["site2"] == [(1 * H, 4 * H)]
    assert prediction.verdict("site2", 2 * H) == "lost"


def test_priming_behind_a_frozen_idb_lasts_until_it_thaws() -> None:
    """A GIM back in service while idb2 is frozen hears it only when it thaws (here before
    its deadlines would pass): the wait is the freeze's rest, not the whole priming."""
    history = [
        *outage(1 * H, 12 * H),
        step(2 * H, "kill", target="gim1"),
        step(10 * H + 30 * M, "pause", target="idb2"),
        step(10 * H + 40 * M, "start", target="gim1"),
        step(11 * H + 50 * M, "resume", target="idb2"),
        end(15 * H),
    ]
    long_wait = predict(load_topology("active-standby"), history, THRESHOLD, TOL, priming=2 * H)
    # Stuck once GIM heard idb2 at 11h50m, before the heal at 12h: the loss is definite.
    assert long_wait.windows["site2"] == [(1 * H, 4 * H)]


def test_a_disaster_must_keep_what_a_healthy_partner_wrote_to_a_surviving_idb() -> None:
    """The census's own bound: icon1b writes site 1's events to idb2 (site 2) except while
    it was down; those must survive the loss of site 1, a few round trips before the end."""
    history = [
        step(2 * H, "kill", target="icon1b"),
        step(3 * H, "start", target="icon1b"),
        {"t": 5 * H, "kind": "dr", "procedure": "fail-site", "site": "site1"},
        end(8 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL, rtt=60.0)
    margin = TOL + 3 * 60.0
    assert prediction.must_keep == {"site1": [(0.0, 2 * H - margin), (3 * H, 5 * H - margin)]}


def test_a_frozen_members_misses_start_once_its_source_stops_waiting_for_it() -> None:
    """icon2a dead, icon2b frozen from 2h to 4h: the source gives up on 2b one
    acknowledgement wait (here 30m of scenario time) later, and what it queues while its
    last probe waits is delivered if 2b wakes within that wait: both edges may go either
    way."""
    history = [
        step(1 * H, "kill", target="icon2a"),
        step(2 * H, "pause", target="icon2b"),
        step(4 * H, "resume", target="icon2b"),
        step(5 * H, "start", target="icon2a"),
        end(7 * H),
    ]
    topology = load_topology("active-standby")
    prediction = predict(topology, history, THRESHOLD, TOL, ack_grace=0.5 * H)
    assert prediction.windows["site2"] == [(2.5 * H, 3.5 * H)]
    assert prediction.verdict("site2", 2.2 * H) == "either"
    assert prediction.verdict("site2", 3 * H) == "lost"
    assert prediction.verdict("site2", 3.8 * H) == "either"


def test_a_killed_members_misses_end_when_it_is_started() -> None:
    """Killed, not frozen: nothing waits in a socket for it, so the window is exact at its
    end (the start edge is the kill itself)."""
    history = [
        step(1 * H, "kill", target="icon2a"),
        step(2 * H, "kill", target="icon2b"),
        step(4 * H, "start", target="icon2b"),
        step(5 * H, "start", target="icon2a"),
        end(7 * H),
    ]
    topology = load_topology("active-standby")
    prediction = predict(topology, history, THRESHOLD, TOL, ack_grace=0.5 * H)
    assert prediction.windows["site2"] == [(2 * H, 4 * H)]
    assert prediction.verdict("site2", 3.8 * H) == "lost"


def test_a_stopped_members_misses_start_once_its_stop_is_done() -> None:
    """A stop is graceful: the ICON acknowledges and queues what arrives until it exits,
    some time before its step is done (here 40m later: a slow WAN held its last commit).
    What was emitted in between may go either way; from the stop's end, it is lost."""
    history = [
        step(1 * H, "kill", target="icon2a"),
        step(2 * H, "stop", target="icon2b"),
        {**step(2 * H + 40 * M, "stop", target="icon2b"), "kind": "step-done"},
        step(4 * H, "start", target="icon2b"),
        {**step(4 * H, "start", target="icon2b"), "kind": "step-done"},
        step(5 * H, "start", target="icon2a"),
        {**step(5 * H, "start", target="icon2a"), "kind": "step-done"},
        end(7 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL)
    assert prediction.windows["site2"] == [(2 * H + 40 * M, 4 * H)]
    assert prediction.verdict("site2", 2 * H + 20 * M) == "either"
    assert prediction.verdict("site2", 3 * H) == "lost"


def test_a_backlog_read_after_its_writer_stopped_brings_completeness_up_to_then() -> None:
    """icon2b frozen from 44m; the WAN cut at 1h47m while icon2a goes on writing to idb2
    (site 2's own IDB, which GIM at site 1 cannot read), until icon2a freezes too at 6h51m.
    The heal at 7h45m brings idb2's backlog: site 2 is complete to 6h51m, not to 1h47m.
    icon2b wakes at 10h53m, but having missed calls it vouches only from then on
    (DESIGN.md section 1): site 2 waits for icon2a, which may hold [6h51m, 10h53m), until
    it wakes at 15h31m. Lagging from 6h51m, site 2 is stuck at 14h51m and back at 15h31m:
    [6h51m, 7h31m) is lost to the cut, and what both missed while frozen is lost too; not
    [1h47m, 15h31m - 8h)."""
    history = [
        step(44 * M, "pause", target="icon2b"),
        step(107 * M, "partition", ["site1", "site2"]),
        step(411 * M, "pause", target="icon2a"),
        step(465 * M, "heal", ["site1", "site2"]),
        step(653 * M, "resume", target="icon2b"),
        step(931 * M, "resume", target="icon2a"),
        end(20 * H),
    ]
    topology = load_topology("active-standby")
    prediction = predict(topology, history, 8 * H, TOL, ack_grace=0.5 * H)
    assert prediction.windows["site2"] == [(411 * M, 653 * M - 0.5 * H)]
    assert prediction.verdict("site2", 2 * H) == "kept"


def test_a_source_started_while_both_icons_are_frozen_may_leave_its_first_batch_queued() -> None:
    """The data source comes back while both ICONs of its site are frozen: its first batch
    waits one acknowledgement in each frozen ICON's socket and is taken when that ICON
    wakes; later ones are missed."""
    history = [
        step(1 * H, "stop", target="source1"),
        step(2 * H, "pause", target="icon1a"),
        step(2 * H, "pause", target="icon1b"),
        step(3 * H, "start", target="source1"),
        step(6 * H, "resume", target="icon1a"),
        step(6 * H, "resume", target="icon1b"),
        end(9 * H),
    ]
    prediction = predict(
        load_topology("active-standby"), history, THRESHOLD, TOL, ack_grace=0.5 * H
    )
    assert prediction.verdict("site1", 3.2 * H) == "either"
    assert prediction.verdict("site1", 4 * H) == "lost"


def test_a_partner_keeps_only_what_the_source_handed_over() -> None:
    """The data source frozen from 1h to 2h: nothing reaches icon1b then, and the batches
    in flight when it froze may never arrive; the census's bound leaves both out."""
    history = [
        step(1 * H, "pause", target="source1"),
        step(2 * H, "resume", target="source1"),
        {"t": 5 * H, "kind": "dr", "procedure": "fail-site", "site": "site1"},
        end(8 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL, rtt=60.0)
    margin = TOL + 3 * 60.0
    assert prediction.must_keep == {"site1": [(0.0, 1 * H - margin), (2 * H, 5 * H - margin)]}


def test_a_gim_killed_before_an_outage_knows_its_sites_only_up_to_its_death() -> None:
    """idb1 down from 1h (so site 2's data is only in idb2, across the WAN), GIM killed at
    2h, the WAN cut at 2h30m while it is dead, GIM back at 3h, the heal at 7h (threshold
    4h). GIM last read site 2 at 2h: its lag runs from there, so it is stuck by 6h and loses
    [2h, 7h - 4h), not the [2h30m, 3h) the outage alone would say."""
    history = [
        step(1 * H, "kill", target="idb1"),
        step(2 * H, "kill", target="gim1"),
        step(2.5 * H, "partition", ["site1", "site2"]),
        step(3 * H, "start", target="gim1"),
        step(7 * H, "heal", ["site1", "site2"]),
        step(8 * H, "start", target="idb1"),
        end(10 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, 4 * H, TOL)
    assert prediction.windows["site2"] == [(2 * H, 3 * H)]


def test_over_a_slow_wan_an_outage_just_short_of_the_threshold_may_go_either_way() -> None:
    """With 12 min round trips (100 ms at 1h = 1s), what GIM had read when the cut began
    may be several trips old: a 7h30m outage from 1h against 8h may have been judged
    stuck, losing what GIM had not read before 8h30m - 8h. The same outage on a fast WAN
    loses nothing, surely. (Noticed up to six trips late, the return's cut may reach 1h42m.)"""
    history = [*outage(1 * H, 8.5 * H), end(12 * H)]
    topology = load_topology("active-standby")
    slow = predict(topology, history, THRESHOLD, TOL, rtt=720.0)
    fast = predict(topology, history, THRESHOLD, TOL)
    assert slow.windows["site2"] == [] and slow.verdict("site2", 0.3 * H) == "either"
    assert slow.verdict("site2", 2 * H) == "kept"
    assert fast.verdict("site2", 0.3 * H) == "kept"


def test_an_outage_within_the_tolerance_of_the_threshold_leaves_its_start_uncertain() -> None:
    """3h57m against 4h: GIM may see the lag pass 4h (its completeness is a heartbeat old)
    and notice the return a little late, discarding a few minutes from the outage's start."""
    history = [*outage(1 * H, 1 * H + 237 * 60), end(10 * H)]
    prediction = predict(load_topology("active-standby"), history, 4 * H, TOL)
    assert prediction.windows["site2"] == []
    assert prediction.verdict("site2", 1 * H + 60) == "either"
    assert prediction.verdict("site2", 2 * H) == "kept"


def test_a_return_may_be_noticed_late_never_early() -> None:
    """GIM notices a return through a new connection: the cut may come up to `reconnect`
    after the predicted one, so those events may go either way, and none before it."""
    history = [*outage(1 * H, 12 * H), end(15 * H)]
    reconnect = 9 * M
    prediction = predict(
        load_topology("active-standby"), history, THRESHOLD, TOL, reconnect=reconnect
    )
    assert prediction.windows["site2"] == [(1 * H, 4 * H)]
    assert (4 * H, 4 * H + reconnect) in prediction.ambiguous["site2"]
    assert not any(a < 4 * H for a, _ in prediction.ambiguous["site2"])


def test_over_a_slow_wan_a_return_may_be_noticed_round_trips_late() -> None:
    """The extraction that brings a site back takes round trips too: over 12 min round
    trips its cut may come six of them late (each GIM at its own time: active-active Info
    Marts may differ there), never early."""
    history = [*outage(1 * H, 12 * H), end(15 * H)]
    topology = load_topology("active-standby")
    slow = predict(topology, history, THRESHOLD, TOL, rtt=720.0)
    assert slow.windows["site2"] == [(1 * H, 4 * H)]
    assert slow.verdict("site2", 4 * H + 60 * M) == "either"
    assert slow.verdict("site2", 4 * H + 90 * M) == "kept"
    fast = predict(topology, history, THRESHOLD, TOL)
    assert fast.verdict("site2", 4 * H + 60 * M) == "kept"


def done(t: float, verb: str, value: Any = None, **options: Any) -> dict[str, Any]:
    return {**step(t, verb, value, **options), "kind": "step-done"}


def test_a_slow_heal_may_bring_the_site_back_before_it_is_done() -> None:
    """The heal step heals each route of the link in turn: GIM's route may be back at the
    step's beginning, so the cut may come as early as that (seen: a 247 ms heal at 1h = 1s,
    15 min of scenario time, let GIM load 70 events of the predicted window)."""
    link = ["site1", "site2"]
    history = [
        step(1 * H, "partition", link),
        done(1 * H, "partition", link),
        step(12 * H, "heal", link),
        done(12 * H + 15 * M, "heal", link),
        end(15 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL)
    assert prediction.windows["site2"] == [(1 * H, 4 * H)]
    assert prediction.verdict("site2", 4 * H + 5 * M) == "either"  # before the step was done
    assert prediction.verdict("site2", 4 * H - 10 * M) == "lost"
    fast = [*history[:3], done(12 * H, "heal", link), end(15 * H)]
    quick = predict(load_topology("active-standby"), fast, THRESHOLD, TOL)
    assert quick.windows["site2"] == [(1 * H, 4 * H)]
    assert quick.verdict("site2", 4 * H + 10 * M) == "kept"


def test_a_slow_partition_may_cut_the_site_off_only_when_it_is_done() -> None:
    """Likewise a partition cuts its routes in turn: GIM may read the site until the step
    is done, so the window surely starts only then."""
    link = ["site1", "site2"]
    history = [
        step(1 * H, "partition", link),
        done(1 * H + 15 * M, "partition", link),
        step(12 * H, "heal", link),
        done(12 * H, "heal", link),
        end(15 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL)
    assert prediction.windows["site2"] == [(1 * H + 15 * M, 4 * H)]
    assert prediction.verdict("site2", 1 * H + 5 * M) == "either"
    assert prediction.verdict("site2", 1 * H + 30 * M) == "lost"


def _congested_prediction(rate_kb_s: int, events_per_hour: float) -> Any:
    from testbed.verdict.congestion import congested_spans

    history = [
        step(1 * H, "bandwidth", None, link=["site1", "site2"], rate=rate_kb_s),
        step(11 * H, "heal", ["site1", "site2"]),
        {
            "t": 11 * H,
            "kind": "step-done",
            "step": {"verb": "heal", "value": ["site1", "site2"], "options": {}},
        },
        end(14 * H),
    ]
    spans = congested_spans(history, events_per_hour, factor=3600)
    return spans, predict(load_topology("active-standby"), history, THRESHOLD, TOL, congested=spans)


def test_a_link_too_slow_for_the_workload_leaves_the_remote_site_open() -> None:
    """50 KB/s at 1300 events/h per site (1h = 1s): less than ICON alone sends across it.
    The remote site may fall behind past the threshold: its events of the span may go
    either way; the GIM's own site is untouched."""
    spans, prediction = _congested_prediction(50, 1300)
    assert [(set(link), a, b) for link, a, b, _ in spans] == [({"site1", "site2"}, 1 * H, 11 * H)]
    assert prediction.verdict("site2", 5 * H) == "either"
    assert prediction.verdict("site1", 5 * H) == "kept"
    assert prediction.verdict("site2", 12 * H) == "kept"
    assert any("may fall behind past the threshold" in n for n in prediction.notes)


def test_a_link_fast_enough_for_the_workload_changes_nothing() -> None:
    spans, prediction = _congested_prediction(5000, 600)
    assert spans == []
    assert prediction.verdict("site2", 5 * H) == "kept"


def test_a_return_restarts_the_lag_of_a_gap_that_began_before_it() -> None:
    """Fuzz, active-standby: the return at 14h (ICON 2b woken, its queue read) brings site 2
    only up to 9h, where 2b froze; ICON 2a's copies wait in IDB 2, stopped until 18h. The
    extraction advanced at 14h, so the lag runs from then: not stuck again by 18h, and
    [9h, 10h) is loaded, as GIM does. (The model judged the gap from 9h on its own and
    declared it stuck at 17h.)"""
    history = [
        step(3 * H, "partition", ["site1", "site2"], mode="blackhole"),
        step(7 * H, "stop", target="idb2"),
        step(9 * H, "pause", target="icon2b"),
        step(10 * H, "heal", ["site1", "site2"]),
        step(14 * H, "resume", target="icon2b"),
        step(18 * H, "start", target="idb2"),
        end(22 * H),
    ]
    assert windows(history) == {"site2": [(3 * H, 6 * H)]}


def test_what_a_member_left_in_its_idb_is_read_when_the_idb_is_though_the_member_is_down() -> None:
    """Fuzz, active-standby: ICON 2a wrote to idb2 behind the cut (1h-2h), then stopped; the
    heal let GIM read that. So when 2a starts again at 5h, its oldest unread data is from
    5h, vouched for only from its restart: it does not cover the hole both members left at
    4h, and site 2 waits for 2b, down until 14h. Stuck at 12h, back at 14h: [4h, 6h) lost.
    (The model took 2a's backlog to begin at 1h, behind the cut, and ended the gap at 5h.)"""
    history = [
        step(1 * H, "partition", ["site1", "site2"]),
        step(2 * H, "stop", target="icon2a"),
        step(3 * H, "heal", ["site1", "site2"]),
        step(4 * H, "stop", target="icon2b"),
        step(5 * H, "start", target="icon2a"),
        step(14 * H, "start", target="icon2b"),
        end(17 * H),
    ]
    assert windows(history) == {"site2": [(4 * H, 6 * H)]}


@pytest.mark.parametrize("target", ["gim1", "infomart1"])
def test_a_gim_back_in_service_hears_every_source_before_it_judges_one(target: str) -> None:
    """GIM or its Info Mart away past the threshold with the WAN whole: a delay, surely.
    The GIM back in service reads every site before it judges any, so no edge of the
    tolerance may call a site stuck there (the model made the whole span "either")."""
    history = [
        step(1 * H, "stop", target=target),
        step(12 * H, "start", target=target),
        end(15 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL)
    assert {site: w for site, w in prediction.windows.items() if w} == {}
    assert all(b - a <= TOL for spans in prediction.ambiguous.values() for a, b in spans)


def test_a_backlog_read_as_gim_comes_back_brings_the_site_up_to_where_its_member_missed() -> None:
    """Fuzz, active-standby: ICON 2b queued behind the cut from 1h, froze at 2h (missing
    calls from then), and wrote its queue to idb1 at the heal, while the Info Mart was
    down. GIM back at 15h reads it first: site 2 is complete to 2h, then lags from there
    (ICON 2a's copies behind a second cut) and is stuck; back at 18h, [2h, 10h) is lost.
    (The model dated that backlog by its write at the heal, not by what it held, and lost
    [1h, 10h).)"""
    history = [
        step(1 * H, "partition", ["site1", "site2"]),
        step(2 * H, "pause", target="icon2b"),
        step(4 * H, "resume", target="icon2b"),
        step(4 * H + 30 * M, "kill", target="infomart1"),
        step(9 * H, "heal", ["site1", "site2"]),
        step(11 * H, "partition", ["site1", "site2"], mode="blackhole"),
        step(15 * H, "start", target="infomart1"),
        step(18 * H, "heal", ["site1", "site2"]),
        end(21 * H),
    ]
    assert windows(history) == {"site2": [(2 * H, 10 * H)]}


def test_what_a_primary_judged_after_replication_stopped_dies_with_it() -> None:
    """Fuzz, active-standby: the WAN black-holed at 2h also stops replication to
    Info Mart 2. GIM 1 sees site 2 stuck at 10h, then site 1 is lost at 11h; GIM 2 goes on
    from the promoted replica, as of 2h, which never held that judgement: site 2 (read
    locally at once) is not stuck for it, and nothing of site 2 is lost. (The model took
    GIM 1's judgement for the lineage's and lost [2h, 4h).)"""

    def dr(t: float, procedure: str, site: str, **more: str) -> dict[str, Any]:
        return {"t": t, "kind": "dr", "procedure": procedure, "site": site, **more}

    history = [
        step(2 * H, "partition", ["site1", "site2"], mode="blackhole"),
        dr(11 * H, "fail-site", "site1"),
        dr(12 * H, "promote", "site2", server="infomart2", former_primary="infomart1"),
        dr(12 * H, "activate-gim", "site2"),
        step(13 * H, "heal", ["site1", "site2"]),
        end(16 * H),
    ]
    prediction = predict(load_topology("active-standby"), history, THRESHOLD, TOL)
    assert prediction.windows.get("site2", []) == []


def test_a_recovery_brings_back_what_its_old_disks_held_but_no_judgement_made_before() -> None:
    """Held by a recovered site's old disks: back, unless a return judged it lost before
    the failure (the lineage knew: the discard was replicated), found by fuzz seed 30303."""
    held = {"in-window", "at-edge", "elsewhere"}
    prediction = Prediction(
        windows={"site1": [(4 * H + 37 * M, 5 * H + 7 * M)]},
        tolerance=M,
        census_lost=held | {"not-held"},
        recovered=held,
    )
    assert prediction.verdict("site1", 4 * H + 50 * M, "in-window") == "lost"
    assert prediction.verdict("site1", 5 * H + 7 * M, "at-edge") == "either"
    assert prediction.verdict("site1", 8 * H, "elsewhere") == "kept"
    assert prediction.verdict("site1", 8 * H, "not-held") == "lost"  # the census's


def test_a_backlog_that_began_before_a_members_miss_brings_nothing_past_it() -> None:
    """ICON 1a queues behind its dead IDB, then freezes, missing calls; ICON 1b carries
    site 1 until a cut. When idb1 starts again, 1a's backlog holds nothing of the cut's
    span (it was frozen then): the site stays behind from the cut until the heal brings
    1b's queue, and is stuck past the threshold (fuzz active-standby seed 50505)."""
    history = [
        step(2 * H + 2 * M, "kill", target="idb1"),
        step(2 * H + 8 * M, "pause", target="icon1a"),
        step(8 * H + 31 * M, "partition", ["site1", "site2"], mode="reset"),
        step(10 * H + 7 * M, "resume", target="icon1a"),
        step(10 * H + 19 * M, "start", target="idb1"),
        step(17 * H + 21 * M, "heal", ["site1", "site2"]),
        end(22 * H),
    ]
    cut, back = 8 * H + 31 * M, 17 * H + 21 * M
    assert windows(history)["site1"] == [(cut, back - THRESHOLD)]


def test_on_virtual_time_a_slow_wan_may_leave_what_gim_read_a_heartbeat_older() -> None:
    """Over a WAN with any latency, an ICON's write at a heartbeat lands after GIM's
    extraction of that instant, which reads it a cycle later: at a cut, what GIM had read
    may be a heartbeat older than the cut (fuzz active-standby seed 50505)."""
    history = [
        step(1 * H, "latency", ["site1", "site2"], ms=13),
        *outage(2 * H, 12 * H),
        end(15 * H),
    ]
    rtt = 2 * 0.013

    def edge_band(cycle: float) -> list[tuple[float, float, str]]:
        prediction = predict(
            load_topology("active-standby"), history, THRESHOLD, M, rtt=rtt, cycle=cycle
        )
        return [b for b in prediction.bands["site2"] if b[2] == SLOW_WAN]

    assert edge_band(0.0) == [(2 * H - 6 * rtt, 2 * H, SLOW_WAN)]
    assert edge_band(M) == [(2 * H - 6 * rtt - M, 2 * H, SLOW_WAN)]
