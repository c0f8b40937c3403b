"""Loss per Info Mart. In active-active each GIM fills its own Info Mart and judges stuck
sites on its own, so each Info Mart is a separate answer: what it lost, what its own
prediction says it should have lost, and whether its loss check passed. The figures of
the Info Mart the run reported from stay where they always were (`lost_events`, ...);
this adds the same figures for every Info Mart in service, that one first."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

from testbed.verdict.bands import either_figures
from testbed.verdict.prediction import Prediction


def loss_by_infomart(
    ledger: list[dict],
    sites: Iterable[str],
    held: Mapping[str, collections.Counter],
    predictions: Mapping[str, Prediction],
    passed: Mapping[str, bool],
) -> dict[str, dict[str, Any]]:
    """`held`: each Info Mart's event ids with how often each is counted, the reporting one
    first; `predictions`: each one's own prediction; `passed`: the run's checks by name,
    where the loss check of the reporting one is `loss`, another's `loss:NAME` when its
    prediction differs and `converged` (its events equal the reporting one's) when it
    agrees."""
    sites = tuple(sites)
    figures: dict[str, dict[str, Any]] = {}
    for index, (name, facts) in enumerate(held.items()):
        prediction = predictions[name]
        check = "loss" if index == 0 else f"loss:{name}"
        if check not in passed:
            check = "converged"
        verdicts = collections.Counter(
            (e["site"], prediction.verdict(e["site"], e["ts"], e["id"])) for e in ledger
        )
        lost = collections.Counter(e["site"] for e in ledger if e["id"] not in facts)
        figures[name] = {
            "lost_events": {s: lost[s] for s in sites},
            "predicted_lost_events": {s: verdicts[(s, "lost")] for s in sites},
            "predicted_lost_range": {
                s: [verdicts[(s, "lost")], verdicts[(s, "lost")] + verdicts[(s, "either")]]
                for s in sites
            },
            "predicted_windows": {
                s: [[a, b] for a, b in prediction.windows.get(s, [])] for s in sites
            },
            **either_figures(ledger, sites, prediction),
            "duplicates": sum(1 for n in facts.values() if n > 1),
            "loss_check": check if check in passed else None,
            "as_predicted": passed.get(check),
        }
    return figures
