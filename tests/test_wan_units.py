"""WAN toxics are reported in the wall units they act in and in scenario time."""

from __future__ import annotations

import pytest

from testbed.verdict.wan_units import wan_toxics


def _fault(action: str, t: float, **detail: object) -> dict:
    return {
        "kind": "fault",
        "t": t,
        "action": action,
        "sites": ["site1", "site2"],
        "detail": detail,
    }


def test_100_ms_at_one_hour_per_second_is_6_minutes_each_way() -> None:
    [entry] = wan_toxics([_fault("degrade", 3600, latency=100, jitter=10)], factor=3600)
    assert entry["wall"] == {"latency_ms": 100, "jitter_ms": 10}
    assert entry["scenario"] == pytest.approx(
        {"latency_s": 360, "jitter_s": 36, "round_trip_s": 720}
    )
    assert entry["at"] == 3600
    assert "6m of scenario time each way, 12m per round trip" in entry["text"]


def test_a_link_rate_per_scenario_hour_and_whether_it_is_shared() -> None:
    shared, private = wan_toxics(
        [
            _fault("degrade", 0, latency=0, jitter=0, bandwidth=2000, bandwidth_shared=True),
            _fault("degrade", 0, latency=0, jitter=0, bandwidth=2000, bandwidth_shared=False),
        ],
        factor=60,  # 1 min = 1 s
    )
    assert shared["wall"] == {"rate_kb_s": 2000}
    assert shared["scenario"]["mb_per_scenario_hour"] == pytest.approx(120)
    assert "shared by every connection" in shared["text"]
    assert "per connection (not shared)" in private["text"]


def test_any_toxic_with_a_time_attribute_is_converted() -> None:
    history = [
        _fault("toxic", 10, type="slicer", streams=["upstream"], attributes={"delay": 500}),
        _fault("toxic", 20, type="timeout", streams=["downstream"], attributes={"timeout": 250}),
        _fault("toxic", 30, type="reset_peer", streams=["upstream"], attributes={"timeout": 0}),
    ]
    slicer, timeout, reset = wan_toxics(history, factor=3600)
    assert slicer["scenario"] == pytest.approx({"delay_s": 1.8})  # microseconds
    assert timeout["scenario"] == pytest.approx({"timeout_s": 900})
    assert "timeout 250 ms = 15m of scenario time" in timeout["text"]
    assert reset["scenario"] == {}


def test_partitions_and_heals_are_not_toxics_to_convert() -> None:
    history = [_fault("partition", 0, mode="reset"), _fault("heal", 5)]
    assert wan_toxics(history, factor=3600) == []
