"""The checks of a scenario run: pure functions of its output folder (the history, the
ledgers, the final database contents). They never talk to a live server, so a report can
be re-made from the folder alone, and every verdict can be traced to recorded data.
"""

from __future__ import annotations

import collections
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.clock import format_duration
from testbed.history import of_kind, read_history
from testbed.prediction import Prediction, predict
from testbed.topology import load_topology


@dataclass
class Check:
    name: str
    passed: bool
    message: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    scenario: str
    passed: bool
    checks: list[Check]
    figures: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "figures": self.figures,
        }


def evaluate(out: Path) -> Outcome:
    history = read_history(out / "history.jsonl")
    run = next(of_kind(history, "run"))
    final = json.loads((out / "final.json").read_text())
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    topology = load_topology(run["topology"])
    settings = run["settings"]
    threshold = float(settings.get("extract_data_stuck_threshold", 28860.0))
    tolerance = float(settings.get("heartbeat_interval", 60.0)) + float(run["detection_s"])
    prediction = predict(topology, history, threshold, tolerance)
    facts = collections.Counter(row[0] for row in final["facts"])
    expect = run["expect"]

    lineage = final.get("lineage", {})
    checks = [
        _completed(final),
        _loss(ledger, facts, prediction, topology.sites, expect.get("loss", {}), lineage),
        _duplicates(facts, int(expect.get("duplicates", 0))),
        _hwm_monotonic(history),
        _residue(history),
    ]
    stuck_seen = sorted({s for e in of_kind(history, "sample") for s in e.get("stuck_sites") or []})
    if "stuck" in expect:
        want = sorted(expect["stuck"])
        checks.append(
            Check(
                "stuck",
                stuck_seen == want,
                f"stuck sites {stuck_seen or 'none'}, expected {want or 'none'}",
            )
        )
    rto = _rto(history)
    if "rto" in expect:
        ok = rto is not None and rto <= float(expect["rto"])
        checks.append(
            Check(
                "rto",
                ok,
                f"recovery took {_fmt(rto)}, expected <= {format_duration(float(expect['rto']))}",
            )
        )
    replica = final.get("replica")
    if replica is not None or "replica" in expect:
        checks.append(_replica(replica, expect.get("replica", "consistent")))

    lost = _lost(ledger, facts)
    factor = float(run["factor"])
    rpo = max((max(ts) - min(ts) for ts in lost.values() if ts), default=0.0)
    figures = {
        "lost_events": {s: len(lost.get(s, [])) for s in topology.sites},
        "predicted_lost_events": {
            s: sum(1 for e in ledger if e["site"] == s and _in(prediction.windows.get(s), e["ts"]))
            for s in topology.sites
        },
        "predicted_windows": {s: [[a, b] for a, b in w] for s, w in prediction.windows.items()},
        "tolerance_s": tolerance,
        "duplicates": sum(1 for n in facts.values() if n > 1),
        "events": len(ledger),
        "facts": sum(facts.values()),
        "discarded": len(final.get("discards", [])),
        "rto_s": rto,
        "rto_wall_s": rto / factor if rto is not None else None,
        "rpo_s": rpo,
        "rpo_wall_s": rpo / factor,
        "stuck_sites": stuck_seen,
        "lineage_sample": dict(list(lineage.items())[:20]),
        "stopped_at": dict(collections.Counter(h["stopped_at"] for h in lineage.values())),
        "prediction_notes": prediction.notes,
    }
    return Outcome(run["scenario"], all(c.passed for c in checks), checks, figures)


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else format_duration(seconds)


def _in(windows: list | None, ts: float) -> bool:
    return any(a <= ts < b for a, b in windows or [])


def _lost(ledger: list[dict], facts: collections.Counter) -> dict[str, list[float]]:
    lost: dict[str, list[float]] = collections.defaultdict(list)
    for event in ledger:
        if event["id"] not in facts:
            lost[event["site"]].append(event["ts"])
    return lost


def _completed(final: dict[str, Any]) -> Check:
    failures = final.get("failures") or []
    return Check(
        "completed",
        not failures,
        "every step ran and reporting settled" if not failures else "; ".join(failures),
    )


def _loss(
    ledger: list[dict],
    facts: collections.Counter,
    prediction: Prediction,
    sites: tuple[str, ...],
    stated: dict[str, Any],
    lineage: dict[str, dict],
) -> Check:
    unpredicted: list[dict] = []
    kept_but_predicted: list[dict] = []
    lost = _lost(ledger, facts)
    for event in ledger:
        verdict = prediction.verdict(event["site"], event["ts"])
        gone = event["id"] not in facts
        if gone and verdict == "kept":
            unpredicted.append(event)
        elif not gone and verdict == "lost":
            kept_but_predicted.append(event)
    problems = []
    if unpredicted:
        first = unpredicted[0]
        where = lineage.get(first["id"], {}).get("stopped_at", "not traced")
        problems.append(
            f"{len(unpredicted)} events lost that the rules do not predict, e.g."
            f" {first['id']} at t={first['ts']:.0f}s (stopped at: {where})"
        )
    if kept_but_predicted:
        first = kept_but_predicted[0]
        problems.append(
            f"{len(kept_but_predicted)} events loaded that the rules say are lost,"
            f" e.g. {first['id']} at t={first['ts']:.0f}s"
        )
    tol = prediction.tolerance
    for site, want in stated.items():
        times = sorted(lost.get(site, []))
        if "events" in want:
            margin = sum(
                1
                for e in ledger
                if e["site"] == site and prediction.verdict(site, e["ts"]) == "either"
            )
            if abs(len(times) - want["events"]) > margin:
                problems.append(
                    f"{site}: {len(times)} events lost, expected {want['events']} (margin {margin})"
                )
        else:
            span = sum(b - a for a, b in prediction.windows.get(site, []))
            actual = (times[-1] - times[0]) if times else 0.0
            if abs(span - want["window"]) > 2 * tol or abs(actual - want["window"]) > 2 * tol:
                problems.append(
                    f"{site}: lost window {format_duration(actual)} (predicted"
                    f" {format_duration(span)}), expected {format_duration(want['window'])}"
                    f" (tolerance {format_duration(2 * tol)})"
                )
    summary = ", ".join(f"{s}: {len(lost.get(s, []))}" for s in sites)
    message = (
        "; ".join(problems)
        if problems
        else (f"lost events as predicted ({summary}; edge tolerance {format_duration(tol)})")
    )
    return Check(
        "loss",
        not problems,
        message,
        {"unpredicted": len(unpredicted), "predicted_but_kept": len(kept_but_predicted)},
    )


def _duplicates(facts: collections.Counter, expected: int) -> Check:
    doubled = sorted(event_id for event_id, n in facts.items() if n > 1)
    ok = len(doubled) == expected
    detail = f", e.g. {doubled[:3]}" if doubled else ""
    return Check(
        "duplicates", ok, f"{len(doubled)} events counted twice, expected {expected}{detail}"
    )


def _hwm_monotonic(history: list[dict]) -> Check:
    last: dict[str, int] = {}
    backwards = []
    for entry in of_kind(history, "sample"):
        for source, mark in (entry.get("hwm") or {}).items():
            if source in last and mark < last[source]:
                backwards.append(f"{source} at t={entry['t']:.0f}s: {last[source]} -> {mark}")
            last[source] = mark
    return Check(
        "hwm-monotonic",
        not backwards,
        "high-water marks never moved back"
        if not backwards
        else "moved back: " + "; ".join(backwards[:3]),
    )


def _residue(history: list[dict]) -> Check:
    wan = next(of_kind(history, "residue"), {}).get("wan", [])
    teardown = next(of_kind(history, "teardown"), None)
    left = teardown.get("leftover_pids", []) if teardown else ["(run did not finish)"]
    problems = [f"WAN: {', '.join(wan)}"] if wan else []
    if left:
        problems.append(f"processes still running: {left}")
    return Check(
        "residue",
        not problems,
        "no toxic, process or server left" if not problems else "; ".join(problems),
    )


def _rto(history: list[dict]) -> float | None:
    """Scenario seconds from the end of the last fault to reporting caught up past it."""
    ends = [
        e["t"] for e in of_kind(history, "step") if e["step"]["verb"] in ("heal", "start", "resume")
    ]
    if not ends:
        return 0.0
    end = max(ends)
    for entry in of_kind(history, "sample"):
        boundary = entry.get("transform_boundary")
        if entry["t"] >= end and boundary is not None and boundary >= end:
            return entry["t"] - end
    settled = next(of_kind(history, "final-settle"), None)
    return settled["t"] - end if settled else None


def _replica(replica: dict[str, Any] | None, expected: str) -> Check:
    if replica is None:
        return Check("replica", False, "no standby to compare")
    if not replica.get("caught_up"):
        state = "diverged"
        message = f"{replica['standby']} did not catch up: {replica.get('error')}"
    else:
        same = replica["primary"] == replica["standby_sum"]
        state = "consistent" if same else "diverged"
        message = (
            f"{replica['standby']} {state} with the primary at LSN {replica['lsn']}"
            f" ({replica['primary'][0]} facts)"
        )
    return Check("replica", state == expected, f"{message}; expected {expected}")
