"""The checked-in Compose environment is what `testbed compose` makes of the topology."""

from __future__ import annotations

from pathlib import Path

import yaml


def test_the_compose_file_matches_the_topology() -> None:
    from testbed.backends.composefile import render
    from testbed.topology import default_topology

    compose_text, wan_text = render(default_topology())
    root = Path(__file__).resolve().parents[1] / "compose"
    assert (root / "two-site.yml").read_text() == compose_text, "run `testbed compose`"
    assert (root / "wan.json").read_text() == wan_text, "run `testbed compose`"


def test_the_swarm_stack_file_matches_the_topology() -> None:
    """The checked-in stack is what the swarm backend's services are made from."""
    from testbed.backends.swarmfile import render, stack_document
    from testbed.topology import default_topology

    root = Path(__file__).resolve().parents[1] / "compose"
    assert (root / "swarm-stack.yml").read_text() == render(default_topology()), (
        "run `testbed compose`"
    )
    services = stack_document(default_topology())["services"]
    on_every_site = [n for n, s in services.items() if {"site1", "site2"} <= set(s["networks"])]
    assert on_every_site == ["wan-proxy"]  # the only path between sites
    for name, service in services.items():
        if name != "agent":
            assert service["deploy"]["placement"]["constraints"], name
    assert services["idb2"]["deploy"]["placement"]["constraints"] == [
        "node.labels.bc-testbed.site2 == true"
    ]
    assert services["infomart2"]["environment"]["PRIMARY"].startswith("wan-proxy:")
    assert services["agent"]["deploy"]["mode"] == "global"


def test_only_the_proxy_joins_both_site_networks() -> None:
    from testbed.backends.composefile import compose_document
    from testbed.topology import default_topology

    services = compose_document(default_topology())["services"]
    on_both = [n for n, s in services.items() if len(s["networks"]) > 1]
    assert on_both == ["wan-proxy"]
    published = [p for s in services.values() for p in s["ports"]]
    assert all(p.startswith("127.0.0.1:") for p in published)
    standby = services["infomart2"]["environment"]["PRIMARY"]
    assert standby.startswith("wan-proxy:")  # replication crosses the WAN proxy
    assert yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "compose" / "two-site.yml").read_text()
    )
