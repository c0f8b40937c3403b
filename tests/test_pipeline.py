"""The pipeline end to end on real servers through the real WAN proxy: every ledger event
becomes exactly one fact, whatever is killed, stopped or cut, except the window the stuck
threshold rule says is lost, which is discarded, counted and nothing more.

Scenario time runs at 1 h per wall second; the stuck threshold is 2 h so a long outage takes
seconds, not a day.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator

import pytest

from testbed.deployment import Deployment
from testbed.pipeline.control import Pipeline, PipelineSettings

HOUR = 3600.0
THRESHOLD = 2 * HOUR
EDGE = 0.25 * HOUR  # heartbeat interval + failure detection, at the edges of a window


@pytest.fixture
def pipeline(testbed_deployment: Deployment) -> Iterator[Callable[..., Pipeline]]:
    started: list[Pipeline] = []

    def start(**settings: float) -> Pipeline:
        values = {"rate_per_hour": 600, "seed": 7, "extract_data_stuck_threshold": THRESHOLD}
        p = Pipeline(testbed_deployment, PipelineSettings(**{**values, **settings}))
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.close()


def outcome(p: Pipeline) -> tuple[set[str], collections.Counter[str], dict[str, tuple]]:
    ledger = {e.id for e in p.ledger()}
    facts = collections.Counter(row[0] for row in p.facts())
    discards = {row[0]: row for row in p.discards()}
    return ledger, facts, discards


def assert_each_event_once(p: Pipeline, discarded_ok: bool = False) -> None:
    ledger, facts, discards = outcome(p)
    assert len(ledger) > 500, "the workload did not run"
    doubled = sorted(i for i, n in facts.items() if n > 1)
    assert not doubled, f"{len(doubled)} events loaded twice, e.g. {doubled[:3]}"
    assert not set(facts) - ledger, "facts that no data source emitted"
    assert not set(facts) & set(discards), "events both loaded and discarded"
    if not discarded_ok:
        assert not discards, f"{len(discards)} events discarded"
    missing = sorted(ledger - set(facts) - set(discards))
    assert not missing, f"{len(missing)} events lost, e.g. {missing[:3]}"


def run_for(p: Pipeline, hours: float) -> None:
    p.clock.sleep(hours * HOUR)


def test_every_ledger_event_becomes_exactly_one_fact(pipeline: Callable[..., Pipeline]) -> None:
    p = pipeline()
    run_for(p, 2)
    p.settle()
    assert_each_event_once(p)
    sources = collections.Counter(row[3] for row in p.facts())
    assert set(sources) <= {"icon1a@idb1", "icon1b@idb2", "icon2a@idb2", "icon2b@idb1"}


def test_an_unreachable_idb_fills_the_queues_which_drain_after(
    pipeline: Callable[..., Pipeline], testbed_deployment: Deployment
) -> None:
    p = pipeline()
    run_for(p, 0.5)
    testbed_deployment.server("idb2").stop()
    run_for(p, 1.2)
    figures = p.figures()
    assert figures["queued_events"]["icon2a"] > 100
    assert figures["queued_events"]["icon1b"] > 100
    testbed_deployment.server("idb2").start()
    p.wait_for(lambda f: f["queued_events"]["icon2a"] == 0, 30, "drained")
    p.settle()
    assert_each_event_once(p)


def test_an_icon_killed_with_a_full_queue_loses_and_doubles_nothing(
    pipeline: Callable[..., Pipeline], testbed_deployment: Deployment
) -> None:
    p = pipeline()
    run_for(p, 0.3)
    wan = testbed_deployment.wan
    wan.partition("site1", "site2", mode="reset")  # icon1b writes across the WAN
    p.wait_for(lambda f: (f["queued_events"]["icon1b"] or 0) > 100, 10, "queued")
    p.process("icon1b").kill()
    wan.heal()
    run_for(p, 0.2)
    p.process("icon1b").start()
    p.wait_for(lambda f: f["queued_events"]["icon1b"] == 0, 30, "drained")
    p.settle()
    assert_each_event_once(p)
    copies = testbed_deployment.server("idb2").scalar(
        "SELECT count(*) - count(DISTINCT event_id) FROM events", dbname="icon1b"
    )
    assert copies == 0


def test_gim_killed_mid_load_loses_and_doubles_nothing(pipeline: Callable[..., Pipeline]) -> None:
    p = pipeline(rate_per_hour=3000)
    for pause in (0.4, 0.25, 0.33):
        run_for(p, pause)
        p.process("gim1").kill()
        run_for(p, 0.1)
        p.process("gim1").start()
    run_for(p, 0.5)
    p.settle()
    assert_each_event_once(p)


def test_one_icon_of_a_pair_down_for_a_while_loses_nothing(
    pipeline: Callable[..., Pipeline],
) -> None:
    p = pipeline()
    run_for(p, 0.3)
    p.process("icon2a").kill()
    run_for(p, 1.0)
    p.process("icon2a").start()
    run_for(p, 0.3)
    p.settle()
    assert_each_event_once(p)
    sources = {row[3] for row in p.facts() if row[1] == "site2"}
    assert sources == {"icon2a@idb2", "icon2b@idb1"}  # the partner covered the gap


def _max_fact_ts(p: Pipeline, site: str | None = None) -> float:
    return max((row[2] for row in p.facts() if site is None or row[1] == site), default=0.0)


def test_an_outage_shorter_than_the_threshold_delays_and_loses_nothing(
    pipeline: Callable[..., Pipeline], testbed_deployment: Deployment
) -> None:
    p = pipeline()
    run_for(p, 0.5)
    start = p.clock.now()
    testbed_deployment.wan.partition("site1", "site2", mode="reset")
    run_for(p, 1.2)
    assert _max_fact_ts(p) <= start + EDGE, "facts past the outage start during the outage"
    assert p.figures()["stuck_sites"] == []
    testbed_deployment.wan.heal()
    p.settle()
    assert_each_event_once(p)


def test_an_outage_longer_than_the_threshold_loses_exactly_the_old_part(
    pipeline: Callable[..., Pipeline], testbed_deployment: Deployment
) -> None:
    p = pipeline()
    run_for(p, 0.5)
    start = p.clock.now()
    testbed_deployment.wan.partition("site1", "site2", mode="blackhole")
    run_for(p, 2.6)  # past the threshold: site 1 goes on without site 2
    figures = p.figures()
    held = testbed_deployment.server("idb1").scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
        " AND now() - xact_start > interval '1 second'"
    )
    assert held == 0, "a writer cut off by the WAN holds a transaction open on idb1"
    assert figures["stuck_sites"] == ["site2"]
    assert _max_fact_ts(p, "site1") > start + THRESHOLD
    assert _max_fact_ts(p, "site2") <= start + EDGE
    run_for(p, 1.0)
    healed = p.clock.now()
    testbed_deployment.wan.heal()
    p.settle()
    assert_each_event_once(p, discarded_ok=True)

    state = testbed_deployment.server("infomart1").execute(
        "SELECT discard_before, discarded, returned_at FROM gim_site WHERE site = 'site2'",
        dbname="infomart",
    )
    discard_before, counted, returned = state[0]
    assert healed <= returned <= healed + 2 * EDGE
    assert discard_before == pytest.approx(returned - THRESHOLD)
    _, _, discards = outcome(p)
    assert counted == len(discards) > 0
    assert {row[1] for row in discards.values()} == {"site2"}
    window = {e.id for e in p.ledger("site2") if start + EDGE <= e.ts < discard_before}
    assert window <= set(discards), "events inside the lost window were loaded"
    assert all(start - EDGE <= row[2] < discard_before for row in discards.values())
    lost_hours = (discard_before - start) / HOUR
    # outage 3.6 h - threshold 2 h = 1.6 h, plus the time GIM takes to notice the return
    assert 1.6 - EDGE / HOUR <= lost_hours <= 1.6 + 2 * EDGE / HOUR


def test_gim_state_survives_a_restart_of_the_info_mart(
    pipeline: Callable[..., Pipeline], testbed_deployment: Deployment
) -> None:
    p = pipeline()
    run_for(p, 0.5)
    testbed_deployment.server("infomart1").kill()
    run_for(p, 0.3)
    testbed_deployment.server("infomart1").start()
    run_for(p, 0.3)
    p.settle()
    assert_each_event_once(p)


def test_sources_stop_and_start_without_loss(pipeline: Callable[..., Pipeline]) -> None:
    p = pipeline()
    p.wait_for(lambda f: (f["emitted"]["source2"] or 0) > 50, 10, "emitting")
    p.process("source2").stop()
    emitted = len(p.ledger("site2"))
    run_for(p, 0.5)
    assert len(p.ledger("site2")) == emitted  # a stopped source emits nothing
    p.process("source2").start()
    run_for(p, 0.5)
    p.settle()
    assert_each_event_once(p)
    times = [e.ts for e in p.ledger("site2")]
    assert max(b - a for a, b in itertools.pairwise(times)) >= 0.4 * HOUR


def test_starting_the_started_fixture_pipeline_does_nothing(testbed_pipeline: Pipeline) -> None:
    """The fixture hands the pipeline over started; the Python example's `start()` must
    not fail on it (nor start anything twice)."""
    pids = {name: p.pid for name, p in testbed_pipeline.processes.items()}
    assert testbed_pipeline.start() is testbed_pipeline
    assert {name: p.pid for name, p in testbed_pipeline.processes.items()} == pids
    running = {n for n, p in testbed_pipeline.processes.items() if p.state() == "running"}
    assert running == {n for n, pid in pids.items() if pid is not None}
    assert {"icon1a", "source1"} <= running
