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
