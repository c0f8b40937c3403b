"""A seeded random schedule of faults: the same seed gives the same schedule, and the
schedule itself is written to the history, so `testbed run --replay` replays exactly it
whatever the code that generated it does today."""

from __future__ import annotations

import random

from testbed.scenarios.spec import Step
from testbed.topology import Topology


def expand(step: Step, topology: Topology, seed: int | None = None) -> list[Step]:
    """Concrete steps for a `chaos` step: faults from `at` to `until`, all healed at the end."""
    options = step.options
    rng = random.Random(seed if seed is not None else options.get("seed", 1))
    until = options["until"]
    mean = options["mean_interval"]
    faults = options["faults"]
    links = list(topology.wan)
    processes = [i.name for i in topology.icons] + [g.name for g in topology.gims if g.active]
    steps: list[Step] = []
    t = step.at
    while True:
        t += rng.expovariate(1.0 / mean)
        if t >= until:
            break
        fault = rng.choice(faults)
        length = min(rng.uniform(0.2, 1.0) * mean, until - t)
        a, b = rng.choice(links)
        if fault == "partition":
            mode = rng.choice(["reset", "blackhole"])
            steps.append(Step(t, "partition", [a, b], {"mode": mode}))
            steps.append(Step(t + length, "heal", [a, b], {}))
        elif fault == "latency":
            steps.append(
                Step(
                    t,
                    "latency",
                    None,
                    {"link": [a, b], "ms": rng.randrange(20, 300), "jitter": rng.randrange(0, 20)},
                )
            )
            steps.append(Step(t + length, "heal", [a, b], {}))
        elif fault == "bandwidth":
            steps.append(
                Step(t, "bandwidth", None, {"link": [a, b], "rate": rng.randrange(50, 2000)})
            )
            steps.append(Step(t + length, "heal", [a, b], {}))
        else:  # kill, stop, pause a process, then bring it back
            target = rng.choice(processes)
            back = "resume" if fault == "pause" else "start"
            steps.append(Step(t, fault, None, {"target": target}))
            steps.append(Step(t + length, back, None, {"target": target}))
        t += length
    steps.append(Step(until, "heal", "all", {}))
    steps.sort(key=lambda s: s.at)
    return steps
