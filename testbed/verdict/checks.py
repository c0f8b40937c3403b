"""The checks of a scenario run: pure functions of its output folder (the history, the
ledgers, the final database contents). They never talk to a live server, so a report can
be re-made from the folder alone, and every verdict can be traced to recorded data.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.clock import Clock, format_duration
from testbed.digests import event_digest
from testbed.history import of_kind, read_history, read_json_lines
from testbed.periods import IO_DEADLINE_S, PRIMING_WALL_S, RECONNECT_WALL_S, ack_timeout
from testbed.topology import Topology, load_topology, topology_from_dict
from testbed.verdict.congestion import congested_spans
from testbed.verdict.infomarts import loss_by_infomart
from testbed.verdict.latency import round_trip_at
from testbed.verdict.prediction import Prediction, predict_all
from testbed.verdict.wan_units import wan_toxics


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
    ledger = read_json_lines(out / "ledger.jsonl")
    # The model starts from the topology the run started with and follows its changes;
    # the figures are per site of the final one (a replacement site included).
    initial = topology = load_topology(run["topology"])
    for change in of_kind(history, "topology-changed"):  # a replacement site was added
        topology = topology_from_dict(change["topology"])
    settings = run["settings"]
    threshold = float(settings.get("extract_data_stuck_threshold", 28860.0))
    heartbeat = float(settings.get("heartbeat_interval", 60.0))
    # Runs before the tolerance was recorded kept its parts: the report re-made is the same.
    tolerance = float(run.get("tolerance_s", heartbeat + float(run["detection_s"])))
    factor = float(run["factor"])
    # The WAN round trip in force at each instant, in scenario time.
    rtt = round_trip_at(history, factor)
    if factor:
        priming = PRIMING_WALL_S * factor
        ack_grace = ack_timeout(Clock(0.0, factor), heartbeat) * factor
        reconnect = RECONNECT_WALL_S * factor
    else:  # the virtual clock: the documented periods alone, no wall time in any band
        priming = IO_DEADLINE_S  # a source behind a black hole answers at its deadline
        ack_grace = heartbeat  # a source's wait for an ICON's acknowledgement
        reconnect = 0.0
    margins = (priming, rtt, ack_grace, reconnect)
    cycle = 0.0 if factor else heartbeat  # see `prediction._in_flight`
    congested = congested_spans(history, float(settings.get("rate_per_hour", 600.0)), factor)
    predictions = predict_all(
        initial, history, threshold, tolerance, *margins, congested, cycle=cycle
    )
    prediction = next(
        (p for p in predictions.values() if p.infomart == final.get("infomart")),
        next(iter(predictions.values())),
    )
    # The rules on the timeline as written: every step taking effect when it began. A
    # window the scenario states is compared with this one, and the events with the one
    # above, so the time the testbed took to apply a step (a heal through a slow API on a
    # busy machine) moves the events' verdicts with it but never the user's arithmetic.
    as_planned = predict_all(
        initial,
        [
            {**e, "t": float(e["step"]["at"])} if e["kind"] == "step" else e
            for e in history
            if e["kind"] != "step-done"
        ],
        threshold,
        tolerance,
        *margins,
        congested,
        cycle=cycle,
    )
    planned = next(
        (p for p in as_planned.values() if p.infomart == prediction.infomart), prediction
    )
    facts = collections.Counter(row[0] for row in final["facts"])
    expect = run["expect"]

    lineage = final.get("lineage", {})
    # A lost site not retired by the end: what a surviving store still holds of it waits
    # for the procedure; it is judged present, not lost (and reported apart).
    waiting = _waiting(ledger, facts, prediction, history, lineage)
    present = facts + collections.Counter(i for ids in waiting.values() for i in ids)
    # Every Info Mart in service, the reporting one first: its event ids, how often each is
    # counted, and the prediction it is judged by (each GIM judges on its own).
    others = final.get("other_infomarts") or {}
    held = {final["infomart"]: present} | {n: collections.Counter(ids) for n, ids in others.items()}
    judged_by = {final["infomart"]: prediction} | {
        name: next((p for p in predictions.values() if p.infomart == name), prediction)
        for name in others
    }
    checks = [
        _completed(final),
        _loss(
            ledger, present, prediction, topology.sites, expect.get("loss", {}), lineage, planned
        ),
        _duplicates(held, int(expect.get("duplicates", 0))),
        _hwm_monotonic(history),
        _residue(history, final.get("leftover"), expect.get("stuck_at_end", [])),
    ]
    if "marks" in final:
        checks.append(_marks(final["marks"]))
    if "fact_contents" in final:
        checks.append(_contents(ledger, final["fact_contents"]))
    if prediction.censuses:
        checks.append(_census_loss(ledger, present, prediction))
    checks.append(_single_active(history, topology.mode, final.get("replica")))
    same_rules = []
    for name in others:
        theirs = judged_by[name]
        if (theirs.windows, theirs.ambiguous) == (prediction.windows, prediction.ambiguous):
            same_rules.append(name)
            continue
        # Each GIM judges stuck sites on its own: this Info Mart against its own prediction.
        check = _loss(ledger, held[name], theirs, topology.sites, {}, {})
        checks.append(dataclasses.replace(check, name=f"loss:{name}"))
    if same_rules:
        checks.append(
            _converged(
                facts, {n: others[n] for n in same_rules}, final["infomart"], ledger, prediction
            )
        )
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
        checks.append(
            _replica(replica, expect.get("replica", "consistent"), set(facts), final["infomart"])
        )
    procedures = [
        {k: v for k, v in e.items() if k not in ("census", "wall", "kind")}
        for e in of_kind(history, "dr")
    ]

    recovered_sites = {p.get("site") for p in procedures if p["procedure"] == "recover-site"}
    lost = _lost(ledger, present)
    factor = float(run["factor"])
    rpo = max((max(ts) - min(ts) for ts in lost.values() if ts), default=0.0)
    by_infomart = loss_by_infomart(
        ledger, topology.sites, held, judged_by, {c.name: c.passed for c in checks}
    )
    reporting = by_infomart[final["infomart"]]
    figures = {
        "lost_events": reporting["lost_events"],
        # Certain to be lost; the range adds the events within the tolerance of a window's
        # edges, which may go either way.
        "predicted_lost_events": reporting["predicted_lost_events"],
        "predicted_lost_range": reporting["predicted_lost_range"],
        "disaster_census": [
            {k: v for k, v in c.items() if k != "lost"} | {"lost": len(c["lost"])}
            for c in prediction.censuses
        ],
        "procedures": procedures,
        "replication_lag_max_bytes": _lag_max(history),
        "predicted_windows": {s: [[a, b] for a, b in w] for s, w in prediction.windows.items()},
        "planned_windows": {s: [[a, b] for a, b in w] for s, w in planned.windows.items()},
        "step_lags": _step_lags(history, factor),
        "wan_toxics": wan_toxics(history, factor),
        "clock": run.get("clock", "realtime"),
        "tolerance_s": tolerance,
        "tolerance_formula": run.get("tolerance_formula"),
        "tolerance_share_of_threshold": tolerance / threshold if threshold else None,
        "duplicates": sum(1 for n in facts.values() if n > 1),
        "events": len(ledger),
        "facts": sum(facts.values()),
        "discarded": len(final.get("discards", [])),
        "rto_s": rto,
        "rto_wall_s": rto / factor if rto is not None and factor else None,
        "rpo_s": rpo,
        "rpo_wall_s": rpo / factor if factor else None,
        "stuck_sites": stuck_seen,
        "lineage_sample": dict(list(lineage.items())[:20]),
        "stopped_at": dict(collections.Counter(h["stopped_at"] for h in lineage.values())),
        "prediction_notes": prediction.notes,
        # Per lost site not retired by the end: its events a surviving store still holds,
        # waiting for the procedure that retires it (`waiting_release`).
        "waiting_events": {site: len(ids) for site, ids in waiting.items()},
        "waiting_release": _release(topology, final["infomart"]) if waiting else None,
        # Per recovered site: events its census counted lost that its old disks gave back.
        "recovered_events": {
            c["site"]: len(set(c["lost"]) & set(present))
            for c in prediction.censuses
            if c["site"] in recovered_sites
        },
        "either_share": reporting["either_share"],
        "either_bands": reporting["either_bands"],
        "by_infomart": by_infomart,
    }
    return Outcome(run["scenario"], all(c.passed for c in checks), checks, figures)


def _step_lags(history: list[dict], factor: float) -> list[dict[str, Any]]:
    """How long after its planned time each step took effect, in scenario and wall
    seconds: the wait for the step before it to finish, plus its own (a start waits for
    the process to report; a heal for the link's last proxy)."""
    lags = []
    for entry in history:
        step = entry.get("step") or {}
        if entry["kind"] == "step-done" and step.get("verb") != "settle":
            lag = entry["t"] - float(step["at"])
            lags.append(
                {
                    "verb": step["verb"],
                    "at": step["at"],
                    "lag_s": lag,
                    "lag_wall_s": lag / factor if factor else None,
                }
            )
    return lags


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else format_duration(seconds)


def _lost(ledger: list[dict], facts: collections.Counter) -> dict[str, list[float]]:
    lost: dict[str, list[float]] = collections.defaultdict(list)
    for event in ledger:
        if event["id"] not in facts:
            lost[event["site"]].append(event["ts"])
    return lost


# Where an event a surviving store held can still be: nothing has dropped it.
WAITING_STOPS = (
    "GIM staging: beyond the transform boundary",
    "GIM extraction: in an IDB, never extracted",
)


def _waiting(
    ledger: list[dict],
    facts: collections.Counter,
    prediction: Prediction,
    history: list[dict],
    lineage: dict[str, dict],
) -> dict[str, set[str]]:
    """Per site lost in a disaster and not retired by the end of the run: its events from
    before the failure that the census found in a surviving store, that are not facts, and
    that are still held there (staged, or in an IDB beyond the marks). GIM cannot transform
    past a source that never answers; the procedure that retires the site releases them."""
    retired = {s for e in of_kind(history, "dr") for s in e.get("retired_sites") or []}
    waiting: dict[str, set[str]] = {}
    for census in prediction.censuses:
        site = census["site"]
        if site in retired:
            continue
        gone = set(census["lost"])
        held = {
            e["id"]
            for e in ledger
            if e["site"] == site
            and e["ts"] <= census["last_ts"]
            and e["id"] not in facts
            and e["id"] not in gone
            and lineage.get(e["id"], {}).get("stopped_at") in WAITING_STOPS
        }
        if held:
            waiting[site] = held
    return waiting


def _release(topology: Topology, infomart: str) -> str:
    """The procedure that releases what waits: GIM activated where it is in service."""
    try:
        return f"activate-gim {topology.server(infomart).site}"
    except KeyError:
        return "activate-gim at the site in service"


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
    planned: Prediction | None = None,
) -> Check:
    unpredicted: list[dict] = []
    kept_but_predicted: list[dict] = []
    lost = _lost(ledger, facts)
    for event in ledger:
        verdict = prediction.verdict(event["site"], event["ts"], event["id"])
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
                if e["site"] == site and prediction.verdict(site, e["ts"], e["id"]) == "either"
            )
            if abs(len(times) - want["events"]) > margin:
                problems.append(
                    f"{site}: {len(times)} events lost, expected {want['events']} (margin {margin})"
                )
        elif any(census["site"] == site for census in prediction.censuses):
            # Only the lost site's loss is a census's count; every other site's window is
            # judged as it would be without the disaster.
            problems.append(f"{site}: a disaster's loss is a count of events, not a window")
        else:
            # The rules on the timeline as written must give the stated window; the events
            # must match the rules on the timeline as it happened (checked one by one above,
            # and here as a whole).
            # Windows are ranges: what is surely lost, plus the edges that may go either
            # way (a frozen ICON's acknowledgement waits, a stuck judgement within the
            # tolerance).
            rules = _window_range(planned or prediction, site)
            span = _window_range(prediction, site)
            actual = (times[-1] - times[0]) if times else 0.0
            if not _within(want["window"], rules, 2 * tol) or not _within(actual, span, 2 * tol):
                problems.append(
                    f"{site}: lost window {format_duration(actual)} (the rules give"
                    f" {_fmt_range(rules)} on the timeline as written,"
                    f" {_fmt_range(span)} as it took effect), expected"
                    f" {format_duration(want['window'])} (tolerance {format_duration(2 * tol)})"
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


def _window_range(prediction: Prediction, site: str) -> tuple[float, float]:
    """The shortest and longest lost window the rules allow: the sure windows' total, and
    the extent of the sure and uncertain ones together (first lost to last lost)."""
    sure = prediction.windows.get(site, [])
    either = [(a, b) for a, b in prediction.ambiguous.get(site, []) if b > a]
    if sure:  # only the uncertain edges of these windows, not uncertainty elsewhere
        near = 2 * prediction.tolerance
        either = [
            (a, b) for a, b in either if any(a <= y + near and b >= x - near for x, y in sure)
        ]
    low = sum(b - a for a, b in sure)
    every = sure + either
    high = max(b for _, b in every) - min(a for a, _ in every) if every else 0.0
    return low, max(low, high)


def _within(value: float, bounds: tuple[float, float], tolerance: float) -> bool:
    return bounds[0] - tolerance <= value <= bounds[1] + tolerance


def _fmt_range(bounds: tuple[float, float]) -> str:
    low, high = bounds
    if high - low < 1.0:
        return format_duration(low)
    return f"{format_duration(low)} to {format_duration(high)}"


def _duplicates(held: dict[str, collections.Counter], expected: int) -> Check:
    """Events counted twice in every Info Mart in service (the reporting one first), their
    total against what the scenario expects."""
    doubled = {
        name: sorted(event_id for event_id, n in facts.items() if n > 1)
        for name, facts in held.items()
    }
    total = sum(len(ids) for ids in doubled.values())
    example = next((ids[:3] for ids in doubled.values() if ids), None)
    detail = f", e.g. {example}" if example else ""
    where = (
        " (" + ", ".join(f"{name}: {len(ids)}" for name, ids in doubled.items()) + ")"
        if len(doubled) > 1
        else ""
    )
    return Check(
        "duplicates",
        total == expected,
        f"{total} events counted twice{where}, expected {expected}{detail}",
    )


def _hwm_monotonic(history: list[dict]) -> Check:
    last: dict[str, int] = {}
    backwards = []
    for entry in of_kind(history, "sample"):
        # Per GIM: a GIM brought into service elsewhere starts from the replicated marks,
        # which may be older; that is re-extraction, not a mark moving back.
        by_gim = entry.get("hwm_by_gim") or {"gim": entry.get("hwm")}
        for gim, marks in by_gim.items():
            for source, mark in (marks or {}).items():
                key = f"{gim}/{source}"
                if key in last and mark < last[key]:
                    backwards.append(f"{key} at t={entry['t']:.0f}s: {last[key]} -> {mark}")
                last[key] = mark
    return Check(
        "hwm-monotonic",
        not backwards,
        "high-water marks never moved back"
        if not backwards
        else "moved back: " + "; ".join(backwards[:3]),
    )


def _residue(
    history: list[dict], leftover: dict[str, Any] | None, stuck_expected: list[str]
) -> Check:
    """Nothing left behind: no toxic, process or server; after the final settle, no event
    queued in a running ICON, no row staged, no site stuck (unless `stuck_at_end` says)."""
    wan = next(of_kind(history, "residue"), {}).get("wan", [])
    teardown = next(of_kind(history, "teardown"), None)
    left = teardown.get("leftover_pids", []) if teardown else ["(run did not finish)"]
    problems = [f"WAN: {', '.join(wan)}"] if wan else []
    if left:
        problems.append(f"processes still running: {left}")
    if leftover is not None:
        if leftover["queued_events"]:
            problems.append(f"events still queued: {leftover['queued_events']}")
        # A site expected stuck at the end holds its late rows in staging by the rules.
        staged = {s: n for s, n in leftover["staged"].items() if s not in stuck_expected}
        if staged:
            problems.append(f"rows still staged, per site: {staged}")
        if sorted(leftover["stuck"]) != sorted(stuck_expected):
            problems.append(
                f"sites stuck at the end: {leftover['stuck'] or 'none'},"
                f" expected {stuck_expected or 'none'}"
            )
    return Check(
        "residue",
        not problems,
        "no toxic, process or server left; nothing queued, staged or stuck"
        if not problems
        else "; ".join(problems),
    )


def _marks(marks: dict[str, Any]) -> Check:
    """Every high-water mark within what its IDB committed, and no committed row below a
    mark that GIM took nowhere (a fact, staged, or discarded with its reason)."""
    problems = []
    for source, mark in marks.items():
        if mark["hwm"] > mark["idb_xmin"]:
            problems.append(
                f"{source}: mark {mark['hwm']} past what the IDB committed ({mark['idb_xmin']})"
            )
        if mark["skipped_count"]:
            problems.append(
                f"{source}: {mark['skipped_count']} rows below the mark never taken,"
                f" e.g. {mark['skipped'][:3]}"
            )
    rows = sum(m["below_mark"] for m in marks.values())
    return Check(
        "marks",
        not problems,
        "; ".join(problems)
        if problems
        else f"{len(marks)} sources: marks within what each IDB committed, all {rows} rows"
        " below them taken",
    )


def _contents(ledger: list[dict], contents: list[list[Any]]) -> Check:
    """Each fact is its ledger event: same site, time and payload."""
    events = {e["id"]: e for e in ledger}
    wrong: list[str] = []
    for event_id, site, ts, payload in contents:
        event = events.get(event_id)
        if event is None:
            wrong.append(f"{event_id}: no such event in any ledger")
        elif (site, ts, payload) != (event["site"], event["ts"], event["payload"]):
            wrong.append(
                f"{event_id}: fact ({site}, {ts}, {payload!r}) but the ledger has"
                f" ({event['site']}, {event['ts']}, {event['payload']!r})"
            )
    return Check(
        "contents",
        not wrong,
        f"{len(wrong)} facts differ from their events, e.g. {wrong[:2]}"
        if wrong
        else f"all {len(contents)} facts equal their ledger events (site, time, payload)",
    )


def _rto(history: list[dict]) -> float | None:
    """Scenario seconds from the end of the last fault to reporting caught up past it."""
    # A lost site ends nothing, but its failure is where a disaster's recovery starts.
    ends = [
        e["t"]
        for e in of_kind(history, "step")
        if e["step"]["verb"] in ("heal", "start", "resume", "fail-site")
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


def _replica(
    replica: dict[str, Any] | None, expected: str, reported: set[str], infomart: str
) -> Check:
    """`consistent`: every standby equals its primary at a pinned LSN, table by table, and
    a standby of the reporting Info Mart holds exactly its events (those the loss check
    judged). `diverged`: two Info Marts really differ (fact rows or keys, or the state their
    GIMs wrote), and the report says how (only then does it pass)."""
    if replica is None:
        return Check("replica", False, "no standby and no split to compare; expected " + expected)
    parts, diverged = [], False
    for pair in replica.get("pairs", []):
        if not pair.get("caught_up"):
            diverged = True
            parts.append(f"{pair['standby']} did not catch up: {pair.get('error')}")
        elif pair["differing_tables"]:
            diverged = True
            first = pair["differences"][pair["differing_tables"][0]]
            parts.append(
                f"{pair['standby']} differs from {pair['primary']} at LSN {pair['lsn']} in"
                f" {', '.join(pair['differing_tables'])} (first rows: {first['first']})"
            )
        elif (
            pair["primary"] == infomart
            and "standby_events" in pair
            and pair["standby_events"]["md5"] != event_digest(reported)
        ):
            diverged = True
            parts.append(
                f"{pair['standby']} holds {pair['standby_events']['count']} events, not the"
                f" {len(reported)} of {infomart}"
            )
        else:
            facts = pair["sums"][pair["primary"]]["fact_interaction"][0]
            parts.append(
                f"{pair['standby']} equals {pair['primary']} at LSN {pair['lsn']} in every"
                f" table ({facts} facts)"
            )
    for split in replica.get("divergence", []):
        if not split["diverged"]:
            parts.append(
                f"{split['promoted']} and {split['old_primary']} hold the same rows in every table"
            )
            continue
        diverged = True
        only = split["fact_rows_only_in"]
        resume = (
            "replication can no longer resume"
            if not split["replication_can_resume"]
            else "replication could still resume"
        )
        tables = split.get("differing_tables")
        parts.append(
            f"split brain: {split['promoted']} (timeline {split['promoted_timeline']}, forked at"
            f" {split['fork_lsn']}) and {split['old_primary']} (wrote"
            f" {split['old_wal_past_fork_bytes']} bytes of WAL past the fork) both took"
            f" writes; fact rows only in {split['old_primary']}: {only[split['old_primary']]},"
            f" only in {split['promoted']}: {only[split['promoted']]}"
            + (f"; tables that differ: {', '.join(tables)}" if tables else "")
            + f"; {resume}"
        )
    state = "diverged" if diverged else "consistent"
    return Check("replica", state == expected, f"{'; '.join(parts)}; expected {expected}")


def _census_loss(ledger: list[dict], facts: collections.Counter, prediction: Prediction) -> Check:
    """A lost site's events before its failure: lost exactly when the census said so, but
    for what a recovered site's old disks held: that comes back (`recovered`)."""
    problems, parts = [], []
    predicted_total = 0
    for census in prediction.censuses:
        site, last = census["site"], census["last_ts"]
        counted = set(census["lost"])
        universe = [e for e in ledger if e["site"] == site and e["ts"] <= last]
        # Of what the census counted lost, what comes back (a recovery's old disks held
        # it, and no return had judged it lost before the failure) or may.
        judged = {
            e["id"]: prediction.verdict(site, e["ts"], e["id"])
            for e in universe
            if e["id"] in counted
        }
        back = {i for i, v in judged.items() if v == "kept"}
        maybe = {i for i, v in judged.items() if v == "either"}
        predicted = counted - back - maybe
        predicted_total += len(counted) - len(back)
        lost = {e["id"] for e in universe if e["id"] not in facts}
        missing = predicted - lost
        extra = {
            e["id"]
            for e in universe
            if e["id"] in lost - counted
            and prediction.verdict(site, e["ts"]) == "kept"  # not explained by another rule
        }
        if missing:
            problems.append(f"{len(missing)} events the census counted lost were loaded")
        not_back = sorted(back & lost)
        if not_back:
            problems.append(
                f"{len(not_back)} events a recovered site's old disks held did not come back,"
                f" e.g. {not_back[:3]}"
            )
        # The census's bound: what a healthy partner wrote to a surviving IDB is there.
        kept_by_partner = {
            e["id"]
            for e in universe
            if any(a <= e["ts"] < b for a, b in prediction.must_keep.get(site, []))
        }
        widened = sorted(kept_by_partner & (lost | predicted))
        if widened:
            problems.append(
                f"{len(widened)} events a healthy partner had written to a surviving IDB"
                f" were lost or counted lost, e.g. {widened[:3]}"
            )
        if extra:
            problems.append(
                f"{len(extra)} events a surviving store held were lost, e.g. {sorted(extra)[:3]}"
            )
        parts.append(
            f"{site}: {len(lost)} of {len(universe)} events lost at the failure, census"
            f" predicted {len(predicted)} ({census['in_surviving_idbs']} saved by a surviving"
            f" IDB, {census['only_in_surviving_infomart']} only by the surviving Info Mart)"
        )
        if back or maybe:
            parts.append(
                f"{site}: {len((back | maybe) - lost)} of the {len(back | maybe)} its old disks"
                " held came back on its recovery"
            )
    return Check(
        "disaster-loss",
        not problems,
        "; ".join(problems + parts),
        {"predicted": predicted_total},
    )


def _single_active(history: list[dict], mode: str, replica: dict[str, Any] | None) -> Check:
    """One GIM in service at a time in active-standby, unless a scenario forced a second
    one in: then the split must be detected and reported."""
    most, when = 0, None
    for entry in of_kind(history, "sample"):
        states = entry.get("states") or {}
        running = [g for g in entry.get("active_gims") or [] if states.get(g) == "running"]
        if len(running) > most:
            most, when = len(running), entry["t"]
    if mode != "active-standby":
        return Check("single-active", True, "active-active: each GIM loads its own Info Mart")
    if most <= 1:
        return Check("single-active", True, "never more than one GIM in service")
    forced = any(e["procedure"] == "activate-gim" for e in of_kind(history, "dr-forced"))
    reported = any(s.get("diverged") for s in (replica or {}).get("divergence", []))
    ok = forced and reported
    hazard = [
        f"{e['infomart']} (left behind by a promotion) loaded again by {e['gim']}"
        for e in of_kind(history, "dr")
        if e.get("dual_active_hazard")
    ]
    return Check(
        "single-active",
        ok,
        f"{most} GIMs in service at once from t={when:.0f}s"
        + (f"; the dual-active hazard: {', '.join(hazard)}" if hazard else "")
        + ("; forced on purpose, and the divergence is reported" if ok else "; not detected"),
    )


def _converged(
    facts: collections.Counter,
    others: dict[str, list[str]],
    main: str,
    ledger: list[dict] | None = None,
    prediction: Prediction | None = None,
) -> Check:
    """Active-active: every Info Mart ends with the same set of events (keys may differ),
    but for events at a window's uncertain edge: each GIM meets that edge at its own time."""
    mine = set(facts)
    either = {
        e["id"]
        for e in ledger or []
        if prediction is not None and prediction.verdict(e["site"], e["ts"], e["id"]) == "either"
    }
    parts, ok = [], True
    for name, events in others.items():
        theirs = set(events)
        differ = theirs ^ mine
        if differ - either:
            ok = False
            parts.append(
                f"{name} differs from {main}: {len(theirs - mine)} events only in {name},"
                f" {len(mine - theirs)} only in {main}"
                + (
                    f" ({len(differ & either)} of them at an uncertain edge)"
                    if differ & either
                    else ""
                )
            )
        elif differ:
            parts.append(
                f"{name} and {main} differ only in {len(differ)} events at an uncertain edge"
                " of a lost window, which each GIM meets at its own time"
            )
        else:
            parts.append(f"{name} holds the same {len(mine)} events as {main}")
    return Check("converged", ok, "; ".join(parts))


def _lag_max(history: list[dict]) -> dict[str, int]:
    most: dict[str, int] = {}
    for entry in of_kind(history, "sample"):
        for name, lag in (entry.get("replication_lag_bytes") or {}).items():
            if lag is not None:
                most[name] = max(most.get(name, 0), lag)
    return most
