"""What the model leaves open is named: every event judged "either" falls in a named band,
and no other does; the report's `either_share` and `either_bands` count them per site."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.topology import load_topology
from testbed.verdict.bands import either_figures
from testbed.verdict.prediction import (
    EDGE,
    LATE_RETURN,
    PRIMING,
    SOURCE_DOWN,
    Prediction,
    predict,
)

H = 3600.0
M = 60.0
THRESHOLD = 8 * H
TOL = 7 * M


def step(t: float, verb: str, value: Any = None, **options: Any) -> dict[str, Any]:
    return {"t": t, "kind": "step", "step": {"verb": verb, "value": value, "options": options}}


def outage(start: float, stop: float) -> list[dict[str, Any]]:
    return [step(start, "partition", ["site1", "site2"]), step(stop, "heal", ["site1", "site2"])]


def end(t: float) -> dict[str, Any]:
    return {"t": t, "kind": "final-settle"}


def ledger(until: float, every: float = 30.0) -> list[dict[str, Any]]:
    """An event per site every `every` scenario seconds."""
    return [
        {"id": f"{site}-{i}", "site": site, "ts": i * every}
        for site in ("site1", "site2")
        for i in range(int(until / every))
    ]


def _predict(history: list[dict[str, Any]], **margins: float) -> Prediction:
    return predict(load_topology("active-standby"), history, THRESHOLD, TOL, **margins)


HISTORIES = {
    "long outage, late return": ([*outage(1 * H, 12 * H), end(15 * H)], {"reconnect": 9 * M}),
    "gim back just before the heal": (
        [
            step(1 * H, "partition", ["site1", "site2"], mode="blackhole"),
            step(12 * H, "heal", ["site1", "site2"]),
            step(2 * H, "kill", target="gim1"),
            step(11 * H, "start", target="gim1"),
            end(15 * H),
        ],
        {"priming": 2 * H},
    ),
    "a data source restarted": (
        [step(2 * H, "kill", target="source2"), step(3 * H, "start", target="source2"), end(5 * H)],
        {},
    ),
}


@pytest.mark.parametrize("name", HISTORIES)
def test_an_event_is_either_exactly_when_a_named_band_holds_it(name: str) -> None:
    history, margins = HISTORIES[name]
    prediction = _predict(history, **margins)
    for event in ledger(15 * H, every=20.0):
        either = prediction.verdict(event["site"], event["ts"]) == "either"
        assert either == bool(prediction.why_either(event["site"], event["ts"])), event


def test_a_long_outage_names_its_edges_and_its_late_return() -> None:
    history, margins = HISTORIES["long outage, late return"]
    prediction = _predict(history, **margins)
    assert prediction.why_either("site2", 1 * H) == {EDGE}
    assert LATE_RETURN in prediction.why_either("site2", 4 * H + 5 * M)
    figures = either_figures(ledger(15 * H), ("site1", "site2"), prediction)
    assert figures["either_share"]["site1"] == 0.0
    site2 = figures["either_bands"]["site2"]
    assert set(site2) == {EDGE, LATE_RETURN}
    # Edges: 14 min at each end of the window, of 15 h; the late return, 9 min past 4h and
    # the tolerance either side, overlaps the far edge (those events count in both).
    assert site2[EDGE] == pytest.approx(4 * TOL / (15 * H), abs=0.002)
    assert figures["either_share"]["site2"] == pytest.approx(
        (2 * TOL + (2 * TOL + 9 * M)) / (15 * H), abs=0.002
    )


def test_a_gim_back_in_service_names_priming_as_the_reason() -> None:
    history, margins = HISTORIES["gim back just before the heal"]
    prediction = _predict(history, **margins)
    assert PRIMING in prediction.why_either("site2", 2 * H)
    unprimed = _predict(history)
    assert PRIMING not in unprimed.why_either("site2", 2 * H)


def test_a_restarted_data_source_names_its_downtime() -> None:
    history, margins = HISTORIES["a data source restarted"]
    prediction = _predict(history, **margins)
    assert prediction.why_either("site2", 2.5 * H) == {SOURCE_DOWN}
    figures = either_figures(ledger(5 * H), ("site1", "site2"), prediction)
    # The hour it was down, and the tolerance either side.
    share = (1 * H + 2 * TOL) / (5 * H)
    assert figures["either_bands"]["site2"] == {SOURCE_DOWN: pytest.approx(share, abs=0.002)}
