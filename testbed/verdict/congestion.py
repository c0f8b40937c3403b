"""When a slow link may make a site fall behind: the model's one throughput rule.

The rules lose a site's data only when a GIM in service saw it lag past the threshold. A
cut link stops the data; a slow one may or may not, depending on whether it carries what
the pipeline sends across it. The model knows the link's capacity (the scenario's
bandwidth step) and the workload, not the bytes each event costs on the wire, so it takes
those from measurement (`bench/transfer.py`: ICON's batch statement, about 83 bytes per
event plus 256 per batch) and calls a link congested when it carries less than
`HEADROOM` times what a site's ICON alone sends across it: GIM's extraction of that site
shares the link too, and a shared link gives each busy connection a fair turn. On a
congested link the remote site's events of the fault's span may go either way; on any
other the fault changes nothing, as before.

Measured on this machine (default topology, 1300 events/h per site at 1h = 1s): toward
the GIM the link carried 137 bytes per event (ICON 46.5, GIM's extraction 88); a 200 KB/s
link kept up for 10 h, a 50 KB/s one made site 2 lag past the threshold.
"""

from __future__ import annotations

from typing import Any

from testbed.verdict.wan_units import toxic_scale

ICON_WIRE_BYTES_PER_EVENT = 83.0
HEADROOM = 3.0


def congested_spans(
    history: list[dict[str, Any]], rate_per_hour: float, factor: float
) -> list[tuple[frozenset[str], float, float, str]]:
    """(link, start, end, why) of every bandwidth fault too slow for the workload, from
    when its step began until its heal was done (or the end of the run)."""
    events_per_wall_s = rate_per_hour * toxic_scale(factor) / 3600.0
    need = ICON_WIRE_BYTES_PER_EVENT * events_per_wall_s  # bytes/s one site's ICON sends
    end_of_run = max((e["t"] for e in history), default=0.0)
    spans: list[tuple[frozenset[str], float, float, str]] = []
    open_faults: dict[frozenset[str], tuple[float, float]] = {}
    for entry in history:
        step = entry.get("step") or {}
        verb = step.get("verb")
        if entry["kind"] == "step" and verb == "bandwidth":
            link = frozenset(step["options"].get("link") or step["value"])
            rate = float(step["options"]["rate"]) * 1000.0
            if rate < HEADROOM * need and link not in open_faults:
                open_faults[link] = (entry["t"], rate)
        elif entry["kind"] == "step-done" and verb == "heal":
            value = step["value"]
            for link in list(open_faults):
                if value == "all" or frozenset(value) == link:
                    start, rate = open_faults.pop(link)
                    spans.append((link, start, entry["t"], _why(rate, need)))
    spans += [(link, s, end_of_run, _why(rate, need)) for link, (s, rate) in open_faults.items()]
    return spans


def _why(rate: float, need: float) -> str:
    return (
        f"the link's {rate / 1000:g} KB/s is under {HEADROOM:g}x the {need / 1000:.0f} KB/s"
        " one site's ICON sends across it at this workload and clock"
    )
