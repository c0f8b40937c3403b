"""How much of each site's data the prediction leaves open, and why. A band that covers
most of a fault's span is a verdict that says nothing, so every report gives, per site,
the share of its events judged "either" (`either_share`), and each band by name with its
own share (`either_bands`; an event in two bands counts in both)."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from testbed.verdict.prediction import Prediction


def either_figures(
    ledger: list[dict[str, Any]], sites: Iterable[str], prediction: Prediction
) -> dict[str, dict[str, Any]]:
    """`{"either_share": {site: share}, "either_bands": {site: {band: share}}}`."""
    sites = tuple(sites)
    events: collections.Counter[str] = collections.Counter()
    either: collections.Counter[str] = collections.Counter()
    bands: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in sites}
    for event in ledger:
        site = event["site"]
        events[site] += 1
        if prediction.verdict(site, event["ts"], event["id"]) != "either":
            continue
        either[site] += 1
        for why in prediction.why_either(site, event["ts"]) or {"unnamed"}:
            bands.setdefault(site, collections.Counter())[why] += 1
    return {
        "either_share": {s: _share(either[s], events[s]) for s in sites},
        "either_bands": {
            s: {why: _share(n, events[s]) for why, n in sorted(bands.get(s, {}).items())}
            for s in sites
        },
    }


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0
