"""What an outage costs, answered by the reference model with no server started.

The verdict's reference model (`verdict.prediction`) judges a run from its recorded history.
Fed instead with a timeline as written (every step taking effect at its planned time), it
answers the operator's question before anything runs: "if the WAN is down for 11 hours,
what do we lose?" The windows are the rules' own; the counts come from the workload a run
of the same scenario would emit (same rate, same seed), so a plan and a run agree event by
event wherever the run's steps take effect on time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from testbed.clock import format_duration
from testbed.pipeline.workload import schedule
from testbed.scenarios import chaos
from testbed.scenarios.spec import DR_VERBS, Scenario, Step
from testbed.topology import Topology
from testbed.verdict.prediction import Prediction, predict_all


@dataclass
class SitePlan:
    site: str
    lost_windows: list[tuple[float, float]]  # scenario seconds, [start, end)
    lost_s: float
    lost_events: int  # the workload's events in the windows (same rate and seed as a run)
    delayed: list[tuple[float, float]]  # spans in which the site's data cannot be reported
    caught_up_at: float | None  # when its reporting can resume: the last span's end

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "lost_windows": [list(w) for w in self.lost_windows],
            "lost_hours": self.lost_s / 3600,
            "lost_events": self.lost_events,
            "delayed": [list(w) for w in self.delayed],
            "delayed_hours": sum(b - a for a, b in self.delayed) / 3600,
            "caught_up_at": self.caught_up_at,
        }


@dataclass
class OutagePlan:
    scenario: str
    topology: str
    threshold_s: float
    rate_per_hour: float
    infomarts: dict[str, list[SitePlan]]  # per Info Mart (one in active-standby)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "topology": self.topology,
            "threshold_s": self.threshold_s,
            "rate_per_hour": self.rate_per_hour,
            "infomarts": {im: [s.to_json() for s in sites] for im, sites in self.infomarts.items()},
            "notes": self.notes,
        }


def outage_steps(at: float, duration: float, mode: str = "reset") -> list[Step]:
    """The WAN between site 1 and site 2 cut at `at` for `duration`, then healed."""
    return [
        Step(at, "partition", ["site1", "site2"], {"mode": mode}),
        Step(at + duration, "heal", ["site1", "site2"], {}),
    ]


def concrete_steps(scenario: Scenario) -> list[Step]:
    """The scenario's timeline as a run plays it: chaos expanded with the same seed."""
    steps: list[Step] = []
    for step in scenario.steps:
        if step.verb == "chaos":
            steps += chaos.expand(step, scenario.topology, step.options.get("seed", 1))
        else:
            steps.append(step)
    return sorted(steps, key=lambda s: s.at)


def plan_timeline(
    name: str,
    topology: Topology,
    steps: list[Step],
    threshold: float,
    rate_per_hour: float,
    seed: int,
    end: float | None = None,
) -> OutagePlan:
    """The rules applied to `steps` as written, per Info Mart and site."""
    last = max((s.at for s in steps), default=0.0)
    end = max(end or 0.0, last + threshold)  # long enough for every return to be judged
    history: list[dict[str, Any]] = [
        {"kind": "step", "t": s.at, "step": s.to_json()} for s in steps
    ]
    history.append({"kind": "plan-end", "t": end})
    predictions = predict_all(topology, history, threshold, tolerance=0.0)
    infomarts: dict[str, list[SitePlan]] = {}
    for chain, prediction in predictions.items():
        label = prediction.infomart or chain
        gim_site = next((g.site for g in topology.gims if g.infomart == label), None)
        infomarts[label] = [
            _site_plan(site, gim_site, prediction, steps, rate_per_hour, seed)
            for site in topology.sites
        ]
    notes = list(dict.fromkeys(n for p in predictions.values() for n in p.notes))
    if any(s.verb in DR_VERBS for s in steps):
        notes.append(
            "operator procedures are planned as written, but what a disaster destroys depends"
            " on what each store held when it struck: only a run counts that (testbed run)"
        )
    return OutagePlan(name, topology.mode, threshold, rate_per_hour, infomarts, notes)


def _site_plan(
    site: str,
    gim_site: str | None,
    prediction: Prediction,
    steps: list[Step],
    rate: float,
    seed: int,
) -> SitePlan:
    windows = [(a, b) for a, b in prediction.windows.get(site, []) if b > a]
    lost_s = sum(b - a for a, b in windows)
    horizon = max((b for _, b in windows), default=0.0)
    count = 0
    if windows and rate > 0:
        for event in itertools.takewhile(lambda e: e.ts < horizon, schedule(site, rate, seed)):
            count += any(a <= event.ts < b for a, b in windows)
    delayed = _cut_off(site, gim_site, steps) if site != gim_site else []
    return SitePlan(site, windows, lost_s, count, delayed, delayed[-1][1] if delayed else None)


def _cut_off(site: str, gim_site: str | None, steps: list[Step]) -> list[tuple[float, float]]:
    """Spans in which a partition between `site` and the GIM's site holds the site's data
    back (it waits in the ICONs' queues and the IDBs until the heal)."""
    link = {site, gim_site}
    spans: list[tuple[float, float]] = []
    open_at: float | None = None
    for step in steps:
        if step.verb == "partition" and set(step.value) == link and open_at is None:
            open_at = step.at
        elif (
            step.verb == "heal"
            and open_at is not None
            and (step.value == "all" or set(step.value) == link)
        ):
            spans.append((open_at, step.at))
            open_at = None
    return spans


def render_outage(plan: OutagePlan) -> list[str]:
    """Plain lines: per Info Mart and site, what is lost and what is only late."""
    lines = [
        f"{plan.scenario}: {plan.topology}, threshold {format_duration(plan.threshold_s)},"
        f" workload {plan.rate_per_hour:g}/h per site"
    ]
    for infomart, sites in plan.infomarts.items():
        if len(plan.infomarts) > 1:
            lines.append(f"{infomart} (its GIM judges on its own):")
        for site in sites:
            lines.append("  " + _site_line(site))
    lines += [f"note: {n}" for n in plan.notes]
    return lines


def _site_line(site: SitePlan) -> str:
    if site.lost_windows:
        spans = ", ".join(
            f"{format_duration(a)} to {format_duration(b)}" for a, b in site.lost_windows
        )
        loss = (
            f"loses {format_duration(site.lost_s)} of data ({spans}), {site.lost_events:,} events"
        )
    else:
        loss = "loses nothing"
    if site.delayed:
        late = sum(b - a for a, b in site.delayed)
        delay = (
            f"; its reporting stops for {format_duration(late)} and catches up once the link"
            f" is back at {format_duration(site.caught_up_at or 0.0)}"
        )
    else:
        delay = ""
    return f"{site.site} {loss}{delay}"
