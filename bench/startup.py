"""How long the default topology takes to come up with the template cached.

Prints one JSON object. The baseline, measured in the same run, is one bare server
(template copy + start), so the ratio says what the topology adds beyond that: databases,
the base backup and the streaming standby.

    python bench/startup.py [--runs 5] [--backend docker]

With `--backend docker` the bare server is one container (its start time), and the local
backend's topology is measured in the same run, interleaved, as the baseline.

With `--backend swarm` the swarm, docker and local backends bring the topology up in turn,
each timed from opening the backend (for swarm: joining or making the swarm, labelling the
node, starting the node agent) to the standby streaming, with the pipeline's components
created too where they are services.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

from testbed.backends.choose import open_backend
from testbed.backends.local import LocalBackend
from testbed.backends.osuser import server_user
from testbed.backends.pgbin import find_binaries
from testbed.backends.storage import STORAGES, ram_available, storage_choice
from testbed.backends.template import ensure_template
from testbed.deployment import bring_up
from testbed.procs import run_stoppable
from testbed.topology import default_topology


def _backend(name: str, home: str, storage: str | None) -> Any:
    if name == "local":
        return LocalBackend(home=home, storage=storage)
    return open_backend(name, home=home)


def time_topology(home: str, storage: str | None, name: str = "local") -> tuple[float, float]:
    with _backend(name, home, storage) as backend:
        start = time.perf_counter()
        bring_up(default_topology(), backend)
        up = time.perf_counter() - start
        start = time.perf_counter()
    return up, time.perf_counter() - start


def time_single_server(home: str, storage: str | None, name: str = "local") -> float:
    with _backend(name, home, storage) as backend:
        if name == "docker":
            backend.network("site1")
        start = time.perf_counter()
        backend.new_server("baseline").init().start()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--storage", choices=STORAGES, default=None, help="default: auto")
    parser.add_argument("--backend", choices=("local", "docker", "swarm"), default="local")
    args = parser.parse_args()
    if args.backend == "swarm":
        swarm_figures(args.runs)
        return
    if args.backend == "docker":
        docker_figures(args.runs)
        return
    ensure_template(find_binaries(), server_user())  # warm: the template is cached
    ups, downs, singles = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-startup-", dir="/var/tmp") as home:
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            singles.append(time_single_server(home, args.storage))
            up, down = time_topology(home, args.storage)
            ups.append(up)
            downs.append(down)
    up_median = statistics.median(ups)
    single_median = statistics.median(singles)
    print(
        json.dumps(
            {
                "topology": "active-standby",
                "servers": len(default_topology().servers),
                "runs": args.runs,
                "storage": args.storage or storage_choice(),
                "ram_available": ram_available(),
                "topology_up_s_median": round(up_median, 3),
                "topology_up_s": [round(x, 3) for x in ups],
                "topology_down_s_median": round(statistics.median(downs), 3),
                "baseline_single_server_up_s_median": round(single_median, 3),
                "ratio_topology_to_single_server": round(up_median / single_median, 2),
            }
        )
    )


def docker_figures(runs: int) -> None:
    """Container start and docker topology start, against the local backend's topology."""
    ensure_template(find_binaries(), server_user())
    docker_ups, local_ups, singles = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-startup-", dir="/var/tmp") as home:
        for _ in range(runs):
            singles.append(time_single_server(home, None, "docker"))
            docker_ups.append(time_topology(home, None, "docker")[0])
            local_ups.append(time_topology(home, None, "local")[0])
    docker_median = statistics.median(docker_ups)
    local_median = statistics.median(local_ups)
    print(
        json.dumps(
            {
                "topology": "active-standby",
                "runs": runs,
                "container_up_s_median": round(statistics.median(singles), 3),
                "docker_topology_up_s_median": round(docker_median, 3),
                "docker_topology_up_s": [round(x, 3) for x in docker_ups],
                "local_topology_up_s_median": round(local_median, 3),
                "ratio_docker_to_local": round(docker_median / local_median, 2),
            }
        )
    )


def time_whole_up(home: str, name: str) -> float:
    """From opening the backend to the topology up and the pipeline's processes made."""
    from testbed.clock import Clock
    from testbed.pipeline.control import Pipeline

    start = time.perf_counter()
    with _backend(name, home, None) as backend:
        deployment = bring_up(default_topology(), backend)
        pipeline = Pipeline(deployment, clock=Clock.start())
        if name == "swarm":
            backend.wait_components()
        up = time.perf_counter() - start
        pipeline.close()
    return up


def swarm_figures(runs: int) -> None:
    """The swarm backend's topology start beside docker's and local's, interleaved."""
    ensure_template(find_binaries(), server_user())
    ups: dict[str, list[float]] = {"swarm": [], "docker": [], "local": []}
    with tempfile.TemporaryDirectory(prefix="bench-startup-", dir="/var/tmp") as home:
        for _ in range(runs):
            for name, figures in ups.items():
                figures.append(time_whole_up(home, name))
    medians = {name: statistics.median(figures) for name, figures in ups.items()}
    print(
        json.dumps(
            {
                "topology": "active-standby",
                "runs": runs,
                **{f"{n}_up_s_median": round(m, 3) for n, m in medians.items()},
                **{f"{n}_up_s": [round(x, 3) for x in ups[n]] for n in ups},
                "ratio_swarm_to_docker": round(medians["swarm"] / medians["docker"], 2),
                "ratio_swarm_to_local": round(medians["swarm"] / medians["local"], 2),
            }
        )
    )


if __name__ == "__main__":
    run_stoppable(main)
