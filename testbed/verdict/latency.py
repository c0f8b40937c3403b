"""The WAN round trip in force at each instant, in scenario time: what the model's
slow-WAN band is made of. A latency healed long before a fault says nothing of it, so the
band of an edge comes from the latency in force at that edge, not from the run's worst.

A latency is in force from when its step began until its link's heal was done (or the end
of the run); on the realtime clock its milliseconds are wall time, so a round trip is
2 x (ms + jitter) x the clock's factor in scenario seconds; on the virtual clock they are
scenario milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testbed.verdict.wan_units import toxic_scale

LATENCY_TOXIC = "latency"


def round_trip_at(history: list[dict[str, Any]], factor: float) -> Callable[[float], float]:
    """`rtt(t)`: the slowest round trip of any link at scenario time `t` (0 when none)."""
    factor = toxic_scale(factor)
    end_of_run = max((e["t"] for e in history), default=0.0)
    spans: list[tuple[float, float, float]] = []
    open_faults: dict[frozenset[str], list[tuple[float, float]]] = {}
    for entry in history:
        step = entry.get("step") or {}
        verb = step.get("verb")
        if entry["kind"] == "step" and (ms := _latency_ms(step)) is not None:
            link = frozenset(step["options"].get("link") or step["value"])
            open_faults.setdefault(link, []).append((entry["t"], 2 * ms / 1000 * factor))
        elif entry["kind"] == "step-done" and verb == "heal":
            value = step["value"]
            for link in list(open_faults):
                if value == "all" or frozenset(value) == link:
                    spans += [(start, entry["t"], rtt) for start, rtt in open_faults.pop(link)]
    spans += [(s, end_of_run, rtt) for faults in open_faults.values() for s, rtt in faults]

    def rtt(t: float) -> float:
        return max((r for start, end, r in spans if start <= t < end), default=0.0)

    return rtt


def _latency_ms(step: dict[str, Any]) -> float | None:
    """A step's latency in ms, jitter included (None for a step that adds none): a
    `latency` step (its `ms`, or its value when that is a number), or a `toxic` step of
    the latency type (its `latency` and `jitter` attributes)."""
    verb, value, options = step.get("verb"), step.get("value"), step.get("options") or {}
    if verb == "latency":
        ms = options.get("ms", value if isinstance(value, int | float) else 0)
        return float(ms) + float(options.get("jitter", 0))
    if verb == "toxic" and options.get("type") == LATENCY_TOXIC:
        attributes = options.get("attributes") or {}
        return float(attributes.get("latency", 0)) + float(attributes.get("jitter", 0))
    return None
