"""Sites on separate hosts, for real: a swarm of two docker-in-docker nodes on this machine,
node1 labelled site1 and node2 site2. `wan-outage-long` runs on it through the swarm
backend; every task of a site must run on that site's node, and the losses must be the
rules' (the verdict) and local's within the tolerance.

Marked `multinode` (and `docker`): it builds the node image once (Debian's docker.io, from
the archive) and loads the images into each node, a few minutes in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.multinode]


@pytest.fixture(scope="module")
def cluster():
    from testbed.backends import images, multinode
    from testbed.backends.multinode import Cluster
    from testbed.errors import TestbedError

    try:
        client = images.engine_client()
        images.current_tags(("postgres", "proxy", "pipeline"))
    except TestbedError as exc:
        pytest.skip(str(exc))
    try:  # Debian's docker.io comes from the archive: a machine without it cannot build
        multinode.node_image(client, say=print)
    except TestbedError as exc:
        pytest.skip(str(exc))
    nodes = Cluster(client, ["site1", "site2"], name=f"bc-testbed-mn-{uuid.uuid4().hex[:6]}")
    try:
        yield nodes.up(say=print)
    finally:
        nodes.down()
    assert not client.containers.list(
        all=True, filters={"label": f"bc-testbed.multinode={nodes.name}"}
    )


def test_each_site_runs_on_its_own_node_and_loses_what_local_loses(
    cluster, run_scenario, tmp_path: Path
) -> None:
    from testbed.topology import load_topology, source_name

    with cluster.environment():
        swarm = run_scenario("wan-outage-long", backend="swarm", clock="1h = 1s")
    local = run_scenario("wan-outage-long", backend="local", clock="1h = 1s")
    for outcome in (swarm, local):
        assert outcome.passed, [c.message for c in outcome.checks if not c.passed]

    history = [
        json.loads(line)
        for line in (tmp_path / "report" / "history.jsonl").read_text().splitlines()
    ]
    placed = next(e["nodes"] for e in history if e["kind"] == "placement")
    print("placement:", placed)
    topology = load_topology("active-standby")
    site_of = {s.name: s.site for s in topology.servers}
    site_of |= {i.name: i.site for i in topology.icons}
    site_of |= {g.name: g.site for g in topology.gims}
    site_of |= {source_name(site): site for site in topology.sites}
    node_of_site = {"site1": "node1", "site2": "node2"}
    running = {name: node for name, node in placed.items() if name in site_of}
    assert set(running) >= {"idb1", "idb2", "infomart1", "infomart2", "icon2a", "gim1"}
    for name, node in running.items():
        assert node == node_of_site[site_of[name]], (name, node)
    assert placed["wan-proxy"] in node_of_site.values()

    s, lo = swarm.figures, local.figures
    print("lost on two nodes:", s["lost_events"], "on local:", lo["lost_events"])
    assert s["stuck_sites"] == lo["stuck_sites"] == ["site2"]

    def lag(figures: dict, verb: str) -> float:
        return next(x["lag_s"] for x in figures["step_lags"] if x["verb"] == verb)

    apart = sum(abs(lag(s, verb) - lag(lo, verb)) for verb in ("partition", "heal"))
    slack = (2 * max(s["tolerance_s"], lo["tolerance_s"]) + apart) * 600 / 3600 + 5
    for site, lost in lo["lost_events"].items():
        assert abs(s["lost_events"][site] - lost) <= slack, (site, s["lost_events"], lost)


def test_a_site_no_node_is_labelled_for_is_refused_in_one_line(cluster, tmp_path: Path) -> None:
    """return-to-normal brings up site3 during the run: refused before it starts, one line,
    exit 2. And on many nodes a site no node carries the label of is refused, saying how to
    label one."""
    from testbed.backends.swarm import SwarmBackend

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "testbed",
            "run",
            "return-to-normal-option-1",
            *("--backend", "swarm", "--clock", "1h = 1s"),
            *("--home", str(tmp_path / "home"), "--out", str(tmp_path / "r")),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_HOST": cluster.manager_url},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "site3" in lines[0] and "--backend local" in lines[0], lines
    with cluster.environment(), SwarmBackend(home=tmp_path / "home") as backend:
        assert backend.refusal(["site1", "site2"]) is None
        reason = backend.refusal(["site1", "site9"])
    assert reason and "docker node update --label-add bc-testbed.site9=true" in reason
