"""The topology model: built-ins obey the documented deployments; bad files say where."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from testbed.errors import InvalidFile
from testbed.topology import load_topology


def test_active_standby_has_two_sites_each_with_an_idb_and_an_infomart() -> None:
    topo = load_topology("active-standby")
    assert topo.sites == ("site1", "site2")
    for site in topo.sites:
        assert sorted(s.role for s in topo.servers_at(site)) == ["idb", "infomart"]
    assert topo.server("infomart2").standby_of == "infomart1"
    assert not topo.server("infomart1").is_standby
    assert [g.name for g in topo.gims if g.active] == ["gim1"]


def test_each_idb_holds_one_database_per_icon_writing_there() -> None:
    topo = load_topology("active-standby")
    assert topo.server("idb1").databases == ("icon1a", "icon2b")
    assert topo.server("idb2").databases == ("icon1b", "icon2a")
    assert topo.server("infomart1").databases == ("infomart",)


def test_icon_pairs_write_member_a_locally_and_member_b_across_the_wan() -> None:
    topo = load_topology("active-standby")
    site_of = {s.name: s.site for s in topo.servers}
    for pair in topo.icon_pairs():
        assert site_of[pair.a.idb] == pair.site
        assert site_of[pair.b.idb] != pair.site


def test_cross_site_routes_cover_icon_b_remote_extraction_and_replication() -> None:
    routes = {
        (r.client, r.server, r.purpose) for r in load_topology("active-standby").cross_site_routes()
    }
    assert routes == {
        ("icon1b", "idb2", "icon"),
        ("icon2b", "idb1", "icon"),
        ("gim1", "idb2", "extract"),
        ("gim2", "idb1", "extract"),
        ("infomart2", "infomart1", "replication"),
    }


def test_active_active_has_no_standby_and_two_active_gims() -> None:
    topo = load_topology("active-active")
    assert topo.mode == "active-active"
    assert not any(s.is_standby for s in topo.servers)
    assert all(g.active for g in topo.gims)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return path


VALID = """\
sites: [site1, site2]
servers:
  idb1: {site: site1, role: idb}
  idb2: {site: site2, role: idb, port: 6543}
"""


def test_a_minimal_file_loads_with_default_wan_links(tmp_path: Path) -> None:
    topo = load_topology(_write(tmp_path, VALID))
    assert topo.wan == (("site1", "site2"),)
    assert topo.server("idb2").port == 6543


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            VALID.replace("site: site1, role: idb}", "site: site9, role: idb}"),
            r"line 3: servers\.idb1\.site: 'site9' is not one of: site1, site2",
        ),
        (
            VALID.replace("role: idb, port", "role: cache, port"),
            r"line 4: servers\.idb2\.role: 'cache' is not one of: idb, infomart",
        ),
        (VALID.replace("port: 6543", "prot: 6543"), r"line 4: servers\.idb2\.prot: unknown field"),
        (
            VALID.replace("port: 6543", "port: 80"),
            r"line 4: servers\.idb2\.port: 80 is not a port number",
        ),
        (VALID + "colour: blue\n", r"line 5: colour: unknown field"),
        (VALID.replace("sites: [site1, site2]", "sites: []"), r"sites: must be a non-empty list"),
        (VALID + "  im9: site1\n", r"line 5: servers\.im9: must be a mapping"),
        (
            VALID.replace("[site1, site2]", "[site1, idb1]"),
            r"servers\.idb1: name 'idb1' is already used",
        ),
        ("servers: {}\n", r"missing required field 'sites'"),
        ("sites: [a\n", r"line 2: not valid YAML"),
    ],
)
def test_an_invalid_file_names_the_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InvalidFile, match=expected) as info:
        load_topology(_write(tmp_path, text))
    assert str(tmp_path / "topology.yaml") in str(info.value)
    assert "\n" not in str(info.value)


def test_a_standby_must_follow_a_known_primary(tmp_path: Path) -> None:
    text = VALID + "  im2: {site: site2, role: infomart, standby_of: im1}\n"
    with pytest.raises(
        InvalidFile, match=r"line 5: servers\.im2\.standby_of: unknown server 'im1'"
    ):
        load_topology(_write(tmp_path, text))


def test_icon_b_must_cross_the_wan(tmp_path: Path) -> None:
    text = VALID + textwrap.dedent("""\
        icons:
          icon1a: {site: site1, member: a, idb: idb1}
          icon1b: {site: site1, member: b, idb: idb1}
    """)
    with pytest.raises(
        InvalidFile, match=r"icons\.icon1b\.idb: member b writes to an IDB at another site"
    ):
        load_topology(_write(tmp_path, text))


def test_every_cross_site_route_needs_a_wan_link(tmp_path: Path) -> None:
    text = VALID + textwrap.dedent("""\
        icons:
          icon1a: {site: site1, member: a, idb: idb1}
          icon1b: {site: site1, member: b, idb: idb2}
        wan: []
    """)
    with pytest.raises(
        InvalidFile, match=r"icon1b at site1 reaches idb2 at site2, but no WAN link"
    ):
        load_topology(_write(tmp_path, text))


def test_an_unknown_name_that_is_no_file_is_refused() -> None:
    with pytest.raises(InvalidFile, match="unknown topology 'nosuch'"):
        load_topology("nosuch")
