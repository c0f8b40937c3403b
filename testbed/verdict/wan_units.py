"""Every WAN toxic a run applied, in the units it acts in and in scenario time.

A toxic delays in wall milliseconds and paces in wall KB/s, while everything else in a run
is scenario time. At 1h = 1s a 100 ms latency is 6 min of scenario time each way: a slow
WAN at this clock is much slower, in the pipeline's terms, than its figure suggests. The
report states both so that nobody reads a wall figure as a scenario one.
"""

from __future__ import annotations

from typing import Any

from testbed.clock import format_duration
from testbed.history import of_kind

# Attributes that are times, and their unit in seconds (`slicer` delays in microseconds).
TIME_ATTRIBUTES = {
    "latency": {"latency": 1e-3, "jitter": 1e-3},
    "timeout": {"timeout": 1e-3},
    "slow_close": {"delay": 1e-3},
    "slow_open": {"delay": 1e-3},
    "slicer": {"delay": 1e-6},
}


def toxic_scale(factor: float) -> float:
    """Scenario seconds per second a toxic counts in: the clock's factor on the realtime
    clock (a toxic waits in wall time), 1 on the virtual clock (it waits in scenario time)."""
    return factor if factor else 1.0


def wan_toxics(history: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    """One entry per WAN degradation or toxic the run applied, oldest first."""
    factor = toxic_scale(factor)
    entries = []
    for fault in of_kind(history, "fault"):
        action, detail = fault["action"], fault.get("detail") or {}
        link = "-".join(fault["sites"])
        at = fault.get("scenario_time")
        at = fault.get("t") if at is None else at  # the history stamps every entry
        if action == "degrade":
            if detail.get("latency") or detail.get("jitter"):
                entries.append(_latency(at, link, detail, factor))
            if detail.get("bandwidth") is not None:
                entries.append(_bandwidth(at, link, detail, factor))
        elif action == "toxic":
            entries.append(_toxic(at, link, detail, factor))
    return entries


def _latency(at: float | None, link: str, detail: dict[str, Any], factor: float) -> dict[str, Any]:
    one_way = detail.get("latency", 0) / 1000.0
    jitter = detail.get("jitter", 0) / 1000.0
    text = (
        f"{link} latency {detail.get('latency', 0)} ms each way"
        + (f" (jitter {detail['jitter']} ms)" if jitter else "")
        + f" = {format_duration(one_way * factor)} of scenario time each way,"
        f" {format_duration(2 * one_way * factor)} per round trip"
    )
    return {
        "at": at,
        "link": link,
        "type": "latency",
        "wall": {"latency_ms": detail.get("latency", 0), "jitter_ms": detail.get("jitter", 0)},
        "scenario": {
            "latency_s": one_way * factor,
            "jitter_s": jitter * factor,
            "round_trip_s": 2 * one_way * factor,
        },
        "text": text,
    }


def _bandwidth(
    at: float | None, link: str, detail: dict[str, Any], factor: float
) -> dict[str, Any]:
    rate = float(detail["bandwidth"])
    per_scenario_hour_mb = rate * 1000 * 3600 / factor / 1e6
    shared = detail.get("bandwidth_shared")
    sharing = "shared by every connection" if shared else "per connection (not shared)"
    return {
        "at": at,
        "link": link,
        "type": "bandwidth",
        "shared": shared,
        "wall": {"rate_kb_s": rate},
        "scenario": {"mb_per_scenario_hour": per_scenario_hour_mb},
        "text": (
            f"{link} bandwidth {rate:g} KB/s each way, {sharing}"
            f" = {per_scenario_hour_mb:.3g} MB per scenario hour"
        ),
    }


def _toxic(at: float | None, link: str, detail: dict[str, Any], factor: float) -> dict[str, Any]:
    kind = detail.get("type", "?")
    attributes = detail.get("attributes") or {}
    wall: dict[str, Any] = dict(attributes)
    scenario: dict[str, Any] = {}
    parts = []
    for name, unit in TIME_ATTRIBUTES.get(kind, {}).items():
        if name in attributes:
            seconds = float(attributes[name]) * unit
            scenario[f"{name}_s"] = seconds * factor
            wall_text = f"{attributes[name]} {'us' if unit == 1e-6 else 'ms'}"
            scenario_text = format_duration(seconds * factor)
            parts.append(f"{name} {wall_text} = {scenario_text} of scenario time")
    if kind == "bandwidth" and "rate" in attributes:
        scenario["mb_per_scenario_hour"] = float(attributes["rate"]) * 3600 / factor / 1000
        parts.append(
            f"rate {attributes['rate']} KB/s per connection"
            f" = {scenario['mb_per_scenario_hour']:.3g} MB per scenario hour"
        )
    streams = "/".join(detail.get("streams") or [])
    text = f"{link} toxic {kind} ({streams})" + (": " + ", ".join(parts) if parts else "")
    return {
        "at": at,
        "link": link,
        "type": kind,
        "wall": wall,
        "scenario": scenario,
        "text": text,
    }
