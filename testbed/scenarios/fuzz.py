"""Generated timelines: random valid scenarios over the step grammar, each run on real
servers and judged by the reference model and every check; a disagreement is shrunk to a
small scenario that still disagrees and written out, ready for `testbed run`.

Why our own generator and shrinker rather than Hypothesis driving the runs: a run costs
seconds of wall time on real servers, so shrinking must be a handful of runs chosen well
(drop a fault with its restoring step, drop the disaster procedures from the end, make
a fault simpler), not the hundreds Hypothesis would try. Generation is deterministic from
the seed: the same seed draws the same scenarios.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.clock import format_duration, parse_duration
from testbed.errors import TestbedError
from testbed.scenarios.engine import ScenarioRun
from testbed.scenarios.spec import DR_VERBS, load_scenario
from testbed.verdict.checks import evaluate
from testbed.verdict.tolerance import refusal, tolerance_for

H = 3600.0
THRESHOLDS = (2 * H, 3 * H, 4 * H, 6 * H, 8 * H)
FACTORS = (3600.0, 2400.0, 1800.0)  # 1h = 1s, 1.5s, 2s
CLOCKS = ("realtime", "virtual")
CHAOS_FAULTS = ("partition", "latency", "bandwidth", "kill", "stop", "pause")
SETTLE = 4 * H

Doc = dict[str, Any]
Judge = Callable[[Doc, Path], "Verdict"]


@dataclass
class Verdict:
    agreed: bool
    failed: list[str]  # names of the checks that failed (or "error")
    messages: list[str]
    tolerance_s: float = 0.0
    out: Path | None = None


@dataclass
class FuzzResult:
    runs: int = 0
    agreed: int = 0
    disagreed: int = 0
    reproductions: list[str] = field(default_factory=list)
    tolerance_s_max: float = 0.0
    wall_s: float = 0.0
    seed: int = 0
    topology: str = "active-standby"
    clock: str = "realtime"
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "agreed": self.agreed,
            "disagreed": self.disagreed,
            "reproductions": self.reproductions,
            "tolerance_s_max": self.tolerance_s_max,
            "wall_s": round(self.wall_s, 1),
            "seed": self.seed,
            "topology": self.topology,
            "clock": self.clock,
            "failures": self.failures,
        }


# --- generation ----------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    return format_duration(max(60.0, round(seconds / 60.0) * 60.0))


class _Generator:
    """One random scenario: a few faults, each with the step that undoes it, none on the
    same target at once, an optional disaster sequence, and a final settle."""

    def __init__(self, rng: random.Random, topology: str, clock: str = "realtime") -> None:
        self.rng = rng
        self.topology = topology
        self.virtual = clock == "virtual"  # toxics then act in scenario units
        self.busy: dict[str, list[tuple[float, float]]] = {}

    def free(self, target: str, start: float, end: float) -> bool:
        return all(end <= a or start >= b for a, b in self.busy.get(target, []))

    def take(self, target: str, start: float, end: float) -> None:
        self.busy.setdefault(target, []).append((start, end))

    def scenario(self, index: int) -> Doc:
        rng = self.rng
        threshold = rng.choice(THRESHOLDS)
        factor = next(
            f for f in (*FACTORS, 1200.0) if refusal(tolerance_for(f), {"t": threshold}) is None
        )
        span = threshold * rng.uniform(0.6, 1.6) + H
        steps: list[Doc] = []
        if rng.random() < 0.1:  # seeded chaos, alone: it picks its own targets
            steps.append(self.chaos(threshold, span))
        else:
            for _ in range(rng.randint(1, 4)):
                steps += self.fault(threshold, span)
        end = max([span, *(self._at(s) for s in steps)]) + 0.5 * H
        if rng.random() < 0.2:
            if rng.random() < 0.3:
                # A disaster while a fault is in force: site 1 lost during a partition,
                # the only fault, and the recovery carried out while the link is still cut.
                start = rng.uniform(0.5 * H, span)
                length = rng.uniform(0.3, 1.6) * threshold
                cut: Doc = {"at": _duration(start), "partition": ["site1", "site2"]}
                cut["mode"] = rng.choice(["reset", "blackhole"])
                steps = [cut, {"at": _duration(start + length), "heal": ["site1", "site2"]}]
                steps += self.disaster(start + rng.uniform(0.1, 0.9) * length, threshold)
            else:
                steps += self.disaster(end, threshold)
            end = max(self._at(s) for s in steps) + 0.5 * H
        steps.append({"at": _duration(end), "settle": _duration(SETTLE)})
        steps.sort(key=self._at)
        return {
            "name": f"fuzz-{index:03d}",
            "description": "generated by testbed fuzz",
            "topology": self.topology,
            "clock": "virtual" if self.virtual else f"1h = {H / factor:g}s",
            "settings": {"extract_data_stuck_threshold": _duration(threshold)},
            "workload": {"rate": f"{rng.randrange(200, 1300, 100)}/h", "seed": rng.randrange(1000)},
            "steps": steps,
        }

    @staticmethod
    def _at(step: Doc) -> float:
        return parse_duration(step["at"])

    def fault(self, threshold: float, span: float) -> list[Doc]:
        rng = self.rng
        for _ in range(20):
            start = rng.uniform(0.5 * H, span)
            # Around the threshold as often as not: that is where the rules turn.
            length = (
                rng.choice([rng.uniform(0.2, 0.9), rng.uniform(0.9, 1.1), rng.uniform(1.1, 1.6)])
                * threshold
            )
            kinds = [
                *("partition", "partition", "latency", "bandwidth"),
                *("slow-then-cut", "process", "process", "server"),
            ]
            kind = rng.choice(kinds)
            wan = ("partition", "latency", "bandwidth", "slow-then-cut")
            target = "wan" if kind in wan else self.pick(kind)
            if not self.free(target, start - 0.3 * H, start + length + 0.3 * H):
                continue
            self.take(target, start - 0.3 * H, start + length + 0.3 * H)
            at, back = _duration(start), _duration(start + length)
            if at == back:
                continue
            if kind == "partition":
                step: Doc = {"at": at, "partition": ["site1", "site2"]}
                step["mode"] = rng.choice(["reset", "blackhole"])
                if rng.random() < 0.3:
                    step["direction"] = rng.choice(["site1->site2", "site2->site1"])
                return [step, {"at": back, "heal": ["site1", "site2"]}]
            if kind == "slow-then-cut":
                # Two faults on one link at once: a latency, then a partition under it for
                # the rest of its span; one heal ends both.
                slow = {"at": at, "latency": ["site1", "site2"], "ms": rng.randrange(10, 150)}
                cut_at = _duration(start + rng.uniform(0.1, 0.6) * length)
                if cut_at in (at, back):
                    continue
                cut: Doc = {"at": cut_at, "partition": ["site1", "site2"]}
                cut["mode"] = rng.choice(["reset", "blackhole"])
                return [slow, cut, {"at": back, "heal": ["site1", "site2"]}]
            if kind == "latency":
                step = {"at": at, "latency": ["site1", "site2"]}
                step["ms"] = rng.randrange(10, 150)
                return [step, {"at": back, "heal": ["site1", "site2"]}]
            if kind == "bandwidth":
                step = {"at": at, "bandwidth": ["site1", "site2"]}
                step["rate"] = rng.randrange(200, 20000)
                return [step, {"at": back, "heal": ["site1", "site2"]}]
            verb = rng.choice(["kill", "stop", "pause"])
            restore = "resume" if verb == "pause" else "start"
            return [{"at": at, verb: target}, {"at": back, restore: target}]
        return []

    def chaos(self, threshold: float, span: float) -> Doc:
        rng = self.rng
        start = rng.uniform(0.5 * H, 0.5 * span)
        return {
            "at": _duration(start),
            "chaos": None,
            "until": _duration(span),
            "seed": rng.randrange(1000),
            "faults": rng.sample(list(CHAOS_FAULTS), 3),
            "mean_interval": _duration(threshold * rng.uniform(0.3, 1.2)),
        }

    def pick(self, kind: str) -> str:
        if kind == "server":
            return self.rng.choice(["idb1", "idb2", "infomart1", "infomart2"])
        gims = ["gim1", "gim2"] if self.topology == "active-active" else ["gim1"]
        return self.rng.choice(
            ["icon1a", "icon1b", "icon2a", "icon2b", "source1", "source2", *gims]
        )

    def disaster(self, at: float, threshold: float) -> list[Doc]:
        """A site lost (either one), then as much of the documented recovery as the dice
        say; after a replacement site came, maybe a fault on its parts or its link."""
        rng = self.rng
        lost = rng.choice(["site1", "site2"])
        survivor = "site2" if lost == "site1" else "site1"
        steps: list[Doc] = [{"at": _duration(at), "fail-site": lost}]
        t = at + rng.uniform(0.3, 1.5) * H
        if rng.random() < 0.35:
            return steps + self.recovery(t, threshold, lost, survivor)
        if self.topology == "active-active":
            return [*steps, {"at": _duration(t), "activate-gim": survivor}]
        if lost == "site1":
            procedure: list[tuple[str, Any]] = [
                ("promote", "site2"),
                ("activate-gim", "site2"),
                ("add-site", "site3"),
                (
                    "transfer",
                    {"from": "site2", "to": "site3", "gim": rng.choice(["running", "stopped"])},
                ),
                ("switchover", "site3"),
            ]
        else:  # the standby site: GIM 1 retires it, site 3 replaces it with a copy of IM 1
            procedure = [
                ("activate-gim", "site1"),
                ("add-site", "site3"),
                (
                    "transfer",
                    {"from": "site1", "to": "site3", "gim": rng.choice(["running", "stopped"])},
                ),
            ]
        for verb, value in procedure:
            step: Doc = {"at": _duration(t), verb: value}
            if verb == "add-site":
                step["replaces"] = lost
            steps.append(step)
            t += rng.uniform(0.2, 1.0) * H
            if verb == "activate-gim" and rng.random() < 0.5:
                return steps
            if verb in ("add-site", "transfer", "switchover") and rng.random() < 0.3:
                break
        if rng.random() < 0.5:
            steps += self.replacement_fault(t, threshold, survivor)
        return steps

    def recovery(self, at: float, threshold: float, lost: str, survivor: str) -> list[Doc]:
        """The survivors take over, then the lost site comes back under its own name, on
        its old disks or on new ones, sooner or later than the threshold after its loss;
        in active-standby maybe its Info Mart rebuilt, and site 1 made active again."""
        rng = self.rng
        steps: list[Doc] = []
        if self.topology == "active-standby" and lost == "site1":
            steps.append({"at": _duration(at), "promote": "site2"})
        steps.append({"at": _duration(at), "activate-gim": survivor})
        t = at + rng.uniform(0.2, 1.6) * threshold
        disks = rng.choice(["kept", "lost"])
        steps.append({"at": _duration(t), "recover-site": lost, "disks": disks})
        # A recovered standby site on its old disks streams again by itself.
        rebuild = self.topology == "active-standby" and (lost == "site1" or disks == "lost")
        if rebuild and rng.random() < 0.6:
            t += rng.uniform(0.2, 1.0) * H
            method = rng.choice(["basebackup", "rewind"]) if disks == "kept" else "basebackup"
            gim = rng.choice(["running", "stopped"])
            transfer = {"from": survivor, "to": lost, "gim": gim, "method": method}
            steps.append({"at": _duration(t), "transfer": transfer})
            if lost == "site1" and rng.random() < 0.5:
                t += rng.uniform(0.2, 1.0) * H
                steps.append({"at": _duration(t), "switchover": "site1"})
        return steps

    def replacement_fault(self, at: float, threshold: float, survivor: str) -> list[Doc]:
        """A fault on the replacement site after it came: its link to the surviving site,
        an ICON of its pair, or its IDB, for a span around the threshold."""
        rng = self.rng
        back = at + rng.choice([rng.uniform(0.2, 0.9), rng.uniform(1.1, 1.6)]) * threshold
        kind = rng.choice(["partition", "process", "server"])
        if kind == "partition":
            cut: Doc = {"at": _duration(at), "partition": [survivor, "site3"]}
            cut["mode"] = rng.choice(["reset", "blackhole"])
            return [cut, {"at": _duration(back), "heal": [survivor, "site3"]}]
        target = rng.choice(["icon3a", "icon3b"]) if kind == "process" else "idb3"
        verb = rng.choice(["kill", "stop", "pause"])
        restore = "resume" if verb == "pause" else "start"
        return [{"at": _duration(at), verb: target}, {"at": _duration(back), restore: target}]


def generate(
    seed: int, count: int, topology: str = "active-standby", clock: str = "realtime"
) -> Iterator[Doc]:
    rng = random.Random(f"fuzz:{seed}:{topology}" + (":virtual" if clock == "virtual" else ""))
    generator = _Generator(rng, topology, clock)
    for index in range(count):
        generator.busy = {}
        yield generator.scenario(index)


# --- judging and shrinking -------------------------------------------------------------------


def judge(doc: Doc, out: Path, home: str | None = None) -> Verdict:
    """Run a scenario document on real servers and judge it; any failed check disagrees."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    scenario = load_scenario(path)
    tolerance = tolerance_for(scenario.factor).seconds
    try:
        ScenarioRun(scenario, out / "report", home=home).run()
        outcome = evaluate(out / "report")
    except TestbedError as exc:
        return Verdict(False, ["error"], [str(exc)], tolerance, out)
    failed = [c for c in outcome.checks if not c.passed]
    (out / "report.json").write_text(json.dumps(outcome.to_json(), indent=2))
    return Verdict(
        not failed,
        [c.name for c in failed],
        [f"{c.name}: {c.message}" for c in failed],
        tolerance,
        out,
    )


def _fault_groups(steps: list[Doc]) -> list[list[int]]:
    """Indices of steps that belong together: a fault and the step that undoes it; the
    disaster procedures as one group (each needs the ones before it)."""
    groups: list[list[int]] = []
    open_by_target: dict[str, int] = {}
    disaster: list[int] = []
    for i, step in enumerate(steps):
        verb = next(k for k in step if k not in ("at", "mode", "direction", "link", "ms", "rate"))
        if verb == "chaos":
            groups.append([i])
            continue
        if verb in DR_VERBS:
            disaster.append(i)
        elif verb in ("partition", "latency", "bandwidth"):
            open_by_target["wan"] = i
        elif verb == "heal" and "wan" in open_by_target:
            groups.append([open_by_target.pop("wan"), i])
        elif verb in ("kill", "stop", "pause"):
            open_by_target[step[verb]] = i
        elif verb in ("start", "resume") and step[verb] in open_by_target:
            groups.append([open_by_target.pop(step[verb]), i])
    if disaster:
        groups.append(disaster)
    return groups


SHORTEST_S = 600.0  # a fault shrinks no shorter than this, nor the lead before the first


def _at(step: Doc) -> float:
    return parse_duration(step["at"])


def _retimed(doc: Doc, steps: list[Doc]) -> Doc:
    return {**doc, "steps": sorted(steps, key=_at)}


def _shorter(doc: Doc) -> Iterator[Doc]:
    """The same faults over less time: each fault undone in half the time, then the whole
    timeline drawn closer to its start. (Whether a fault outlasts the threshold is what
    most verdicts hinge on, so these keep the same failing check or are rejected.)"""
    steps = doc["steps"]
    for group in _fault_groups(steps):
        if len(group) != 2:
            continue
        fault, undo = group
        length = _at(steps[undo]) - _at(steps[fault])
        if length / 2 < SHORTEST_S:
            continue
        moved = {**steps[undo], "at": _duration(_at(steps[fault]) + length / 2)}
        yield _retimed(doc, [moved if i == undo else s for i, s in enumerate(steps)])
    lead = min((_at(s) for s in steps), default=0.0)
    if lead / 2 >= SHORTEST_S:
        yield _retimed(doc, [{**s, "at": _duration(_at(s) - lead / 2)} for s in steps])


def _candidates(doc: Doc) -> Iterator[Doc]:
    """Smaller or simpler scenarios, most promising first."""
    steps = doc["steps"]
    for group in _fault_groups(steps):
        yield {**doc, "steps": [s for i, s in enumerate(steps) if i not in group]}
    yield from _shorter(doc)
    for i, step in enumerate(steps):
        simpler = dict(step)
        if step.get("mode") == "blackhole":
            simpler["mode"] = "reset"
        elif "direction" in step:
            del simpler["direction"]
        elif "pause" in step or "stop" in step:
            verb = "pause" if "pause" in step else "stop"
            simpler = {"at": step["at"], "kill": step[verb]}
        else:
            continue
        changed = [*steps[:i], simpler, *steps[i + 1 :]]
        if "pause" in step:  # the resume that undid it becomes a start
            changed = [
                {"at": s["at"], "start": s["resume"]}
                if s.get("resume") == step["pause"] and s is not step
                else s
                for s in changed
            ]
        yield {**doc, "steps": changed}


def shrink(
    doc: Doc, verdict: Verdict, run: Callable[[Doc], Verdict], budget: int
) -> tuple[Doc, Verdict, int]:
    """Greedy: take the first candidate that still fails one of the same checks, and start
    over from it, until no candidate does or the budget of runs is spent."""
    tried = 0
    improved = True
    while improved and tried < budget:
        improved = False
        for candidate in _candidates(doc):
            if tried >= budget:
                break
            try:
                load_check(candidate)
            except TestbedError:
                continue  # not a valid scenario any more
            tried += 1
            result = run(candidate)
            if not result.agreed and set(result.failed) & set(verdict.failed):
                doc, verdict, improved = candidate, result, True
                break
    return doc, verdict, tried


def load_check(doc: Doc) -> None:
    """Raise TestbedError if the document is not a valid scenario."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "candidate.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
        load_scenario(path)


# --- the campaign ----------------------------------------------------------------------------


def _judged(
    docs: list[Doc],
    out: Path,
    run_one: Callable[[Doc, Path], Verdict],
    home: str | None,
    jobs: int,
    progress: Callable[[int, str], None] | None,
) -> Iterator[tuple[Doc, Verdict]]:
    """Each document with its verdict, in the order drawn; `jobs` at a time, each in a new
    interpreter (a run holds signal handlers, a fork server and a clock of its own)."""
    if jobs <= 1:
        for index, doc in enumerate(docs):
            if progress:
                progress(index, doc["name"])
            yield doc, run_one(doc, out / "runs" / doc["name"])
        return
    from testbed.scenarios.batch import in_parallel

    calls = [(doc, out / "runs" / doc["name"], home) for doc in docs]
    verdicts = in_parallel(judge, calls, jobs)
    for index, (doc, verdict) in enumerate(zip(docs, verdicts, strict=False)):
        if progress:
            progress(index, doc["name"])
        yield doc, verdict


def fuzz(
    runs: int,
    seed: int,
    topology: str,
    out: Path,
    home: str | None = None,
    shrink_budget: int = 6,
    progress: Callable[[int, str], None] | None = None,
    judge_fn: Callable[[Doc, Path], Verdict] | None = None,
    clock: str = "realtime",
    jobs: int = 1,
) -> FuzzResult:
    """Draw `runs` scenarios, judge each; shrink and write out every disagreement. With
    `jobs` > 1 that many are judged at once, each in a process of its own: on virtual time
    a run's outcome does not depend on how busy the machine is, so they may share it."""
    run_one = judge_fn or (lambda doc, folder: judge(doc, folder, home))
    result = FuzzResult(seed=seed, topology=topology, clock=clock)
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    docs = list(generate(seed, runs, topology, clock))
    for doc, verdict in _judged(docs, out, run_one, home, jobs, progress):
        folder = out / "runs" / doc["name"]
        result.runs += 1
        result.tolerance_s_max = max(result.tolerance_s_max, verdict.tolerance_s)
        if verdict.agreed:
            result.agreed += 1
            shutil.rmtree(folder, ignore_errors=True)  # keep what disagreed only
            continue
        result.disagreed += 1
        attempt = 0

        def run_candidate(candidate: Doc, name: str = doc["name"]) -> Verdict:
            nonlocal attempt
            attempt += 1
            return run_one(candidate, out / "shrink" / f"{name}-{attempt}")

        small, small_verdict, tried = shrink(doc, verdict, run_candidate, shrink_budget)
        small = {**small, "name": f"{doc['name']}-min"}
        repro = out / f"{doc['name']}-min.yaml"
        repro.write_text(yaml.safe_dump(small, sort_keys=False, default_flow_style=None))
        if small_verdict.out is not None:
            report = small_verdict.out / "report.json"
            if report.exists():
                shutil.copy(report, out / f"{doc['name']}-min.report.json")
        result.reproductions.append(str(repro))
        result.failures.append(
            {
                "scenario": doc["name"],
                "failed": verdict.failed,
                "messages": [m[:500] for m in small_verdict.messages],
                "steps": len(doc["steps"]),
                "steps_after_shrinking": len(small["steps"]),
                "shrink_runs": tried,
            }
        )
    result.wall_s = time.monotonic() - started
    (out / "fuzz.json").write_text(json.dumps(result.to_json(), indent=2))
    return result
