"""The slow-WAN band comes from the latency in force at each edge, not from the run's
worst: a 300 ms latency healed before a 9 h outage leaves that outage's edges sharp."""

from __future__ import annotations

from typing import Any

from testbed.topology import load_topology
from testbed.verdict.latency import round_trip_at
from testbed.verdict.prediction import SLOW_WAN, predict

H = 3600.0
M = 60.0
THRESHOLD = 8 * H
TOL = 7 * M
FACTOR = 3600.0  # 1h = 1s: 300 ms of wall latency is 36 scenario minutes a round trip


def both(t: float, verb: str, value: Any = None, **options: Any) -> list[dict[str, Any]]:
    """A step and its step-done at the same instant."""
    step = {"verb": verb, "value": value, "options": options}
    return [{"t": t, "kind": "step", "step": step}, {"t": t, "kind": "step-done", "step": step}]


LINK = ["site1", "site2"]


def test_a_latency_is_in_force_from_its_step_to_its_links_heal() -> None:
    history = [*both(1 * H, "latency", LINK, ms=300), *both(2 * H, "heal", LINK)]
    rtt = round_trip_at([*history, {"t": 5 * H, "kind": "final-settle"}], FACTOR)
    assert rtt(0.5 * H) == 0.0
    assert rtt(1.5 * H) == 2 * 0.3 * FACTOR
    assert rtt(3 * H) == 0.0


def test_jitter_and_latency_toxics_count_too() -> None:
    history = [
        *both(1 * H, "latency", LINK, ms=100, jitter=50),
        *both(1 * H, "toxic", LINK, type="latency", attributes={"latency": 200, "jitter": 20}),
        {"t": 3 * H, "kind": "final-settle"},
    ]
    assert round_trip_at(history, FACTOR)(2 * H) == 2 * 0.22 * FACTOR


def _outage_after_a_healed_latency() -> list[dict[str, Any]]:
    return [
        *both(30 * M, "latency", LINK, ms=300),
        *both(1 * H, "heal", LINK),
        *both(2 * H, "partition", LINK),
        *both(11 * H, "heal", LINK),
        {"t": 14 * H, "kind": "final-settle"},
    ]


def test_a_latency_healed_before_an_outage_leaves_its_edges_sharp() -> None:
    history = _outage_after_a_healed_latency()
    topology = load_topology("active-standby")
    in_force = predict(topology, history, THRESHOLD, TOL, rtt=round_trip_at(history, FACTOR))
    assert in_force.windows["site2"] == [(2 * H, 3 * H)]
    assert not any(why == SLOW_WAN for _, _, why in in_force.bands["site2"])
    assert in_force.verdict("site2", 2 * H + 20 * M) == "lost"
    # The run's worst round trip applied everywhere, as before: 6 round trips of 36 min
    # open 3h36m before the outage and after the cut, which the healed latency cannot cause.
    worst = predict(topology, history, THRESHOLD, TOL, rtt=2 * 0.3 * FACTOR)
    for t in (1 * H, 5 * H):
        assert worst.verdict("site2", t) == "either"
        assert in_force.verdict("site2", t) == "kept"


def test_a_latency_in_force_when_the_flow_stops_widens_that_edge() -> None:
    history = [
        *both(1 * H, "latency", LINK, ms=50),
        *both(2 * H, "partition", LINK),
        *both(11 * H, "heal", LINK),
        {"t": 14 * H, "kind": "final-settle"},
    ]
    prediction = predict(
        load_topology("active-standby"), history, THRESHOLD, TOL, rtt=round_trip_at(history, FACTOR)
    )
    slow = [(a, b) for a, b, why in prediction.bands["site2"] if why == SLOW_WAN]
    assert slow == [(2 * H - 6 * 2 * 0.05 * FACTOR, 2 * H)]
