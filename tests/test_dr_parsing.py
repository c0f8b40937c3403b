"""The disaster-recovery vocabulary of scenario files and topologies, and the prediction
of a disaster's loss: parsed and computed without servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.errors import InvalidFile
from testbed.scenarios.spec import load_scenario
from testbed.topology import (
    load_topology,
    renamed_for_site,
    topology_from_dict,
    topology_to_dict,
    with_replacement_site,
)
from testbed.verdict.prediction import predict

DR = """\
name: dr
workload: {rate: 600/h}
steps:
  - at: 1h
    fail-site: site1
  - at: 1h
    promote: site2
  - at: 2h
    add-site: site3
  - at: 3h
    transfer: {from: site2, to: site3}
  - at: 3h
    latency: [site2, site3]
    ms: 10
  - at: 4h
    switchover: site3
  - at: 4h
    kill: icon3a
expect:
  loss: {site3: 0}
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_scenario(path)


def test_dr_steps_parse_and_an_added_site_can_be_named_afterwards(tmp_path: Path) -> None:
    scenario = _load(tmp_path, DR)
    verbs = [(s.verb, s.value) for s in scenario.steps]
    assert ("add-site", "site3") in verbs
    transfer = next(s for s in scenario.steps if s.verb == "transfer")
    assert transfer.value == {
        "from": "site2",
        "to": "site3",
        "gim": "running",
        "method": "basebackup",
    }
    assert next(s for s in scenario.steps if s.verb == "add-site").options == {"replaces": "site1"}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("promote: site2", "promote: site8", r"steps\[1\]\.promote: unknown site 'site8'"),
        ("add-site: site3", "add-site: site2", r"must name a new site"),
        ("{from: site2, to: site3}", "{from: site2}", r"transfer needs 'to'"),
        ("{from: site2, to: site3}", "{from: site2, to: site3, gim: off}", r"not running or"),
        ("    promote: site2", "    promote: site2\n    force: yes please", r"true or false"),
        ("  - at: 1h\n    fail-site: site1\n", "", r"say which lost site it replaces"),
    ],
)
def test_dr_step_mistakes_are_one_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    with pytest.raises(InvalidFile, match=expected):
        _load(tmp_path, DR.replace(old, new))


def test_a_replacement_site_takes_over_the_lost_sites_role() -> None:
    topo = with_replacement_site(load_topology("active-standby"), "site3", "site1")
    assert topo.sites == ("site1", "site2", "site3")
    icons = {i.name: i.idb for i in topo.icons}
    assert icons["icon2b"] == "idb3"  # re-pointed from the lost idb1
    assert icons["icon3a"] == "idb3" and icons["icon3b"] == "idb2"
    assert topo.server("infomart3").databases == ("infomart",)
    assert not topo.server("infomart3").is_standby
    assert ("site2", "site3") in topo.wan
    assert not next(g for g in topo.gims if g.name == "gim3").active
    assert topology_from_dict(topology_to_dict(topo)) == topo
    assert renamed_for_site("idb1", "east", "west") == "idb1_west"


def _entry(t: float, kind: str, **fields: object) -> dict:
    return {"t": t, "wall": 0.0, "kind": kind, **fields}


def test_a_disaster_loses_exactly_the_census_and_nothing_after_it() -> None:
    topo = load_topology("active-standby")
    census = {
        "site": "site1",
        "events": 3,
        "last_ts": 99.0,
        "in_surviving_idbs": 2,
        "only_in_surviving_infomart": 0,
        "lost": ["site1-000000002"],
    }
    history = [
        _entry(0.0, "run"),
        _entry(100.0, "step", step={"verb": "fail-site", "value": "site1", "options": {}}),
        _entry(100.0, "dr", procedure="fail-site", site="site1", census=census),
        _entry(200.0, "dr", procedure="activate-gim", site="site2"),
        _entry(90000.0, "final-settle"),
    ]
    prediction = predict(topo, history, threshold=28800.0, tolerance=60.0)
    assert prediction.verdict("site1", 50.0, "site1-000000002") == "lost"
    assert prediction.verdict("site1", 98.0, "site1-000000001") == "kept"
    assert prediction.windows["site1"] == []  # the failure is explained by the census
    assert prediction.windows["site2"] == []  # GIM 2 took over: site 2 flows all along
    assert any("1 were nowhere else" in note for note in prediction.notes)


RECOVER = """\
name: recover
workload: {rate: 600/h}
steps:
  - at: 1h
    fail-site: site1
  - at: 3h
    recover-site: site1
    disks: kept
  - at: 4h
    transfer: {from: site2, to: site1, method: rewind}
"""


def test_a_recovered_site_parses_and_keeps_its_disks_by_default(tmp_path: Path) -> None:
    scenario = _load(tmp_path, RECOVER.replace("    disks: kept\n", ""))
    recover = next(s for s in scenario.steps if s.verb == "recover-site")
    assert (recover.value, recover.options) == ("site1", {"disks": "kept"})
    transfer = next(s for s in scenario.steps if s.verb == "transfer")
    assert transfer.value["method"] == "rewind"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("disks: kept", "disks: maybe", r"steps\[1\]\.disks: 'maybe' is not kept or lost"),
        ("recover-site: site1", "recover-site: site2", r"site2 has not failed"),
        ("  - at: 1h\n    fail-site: site1\n", "", r"site1 has not failed"),
        ("method: rewind", "method: rsync", r"'rsync' is not basebackup or rewind"),
        (
            "  - at: 3h\n    recover-site",
            "  - at: 2h\n    add-site: site3\n  - at: 3h\n    recover-site",
            r"site1 was replaced by site3",
        ),
        (
            "  - at: 4h\n",
            "  - at: 3h\n    recover-site: site1\n  - at: 4h\n",
            r"site1 has not failed",
        ),
    ],
)
def test_recover_site_mistakes_are_one_line(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    with pytest.raises(InvalidFile, match=expected):
        _load(tmp_path, RECOVER.replace(old, new))


def test_a_recovered_site_is_judged_by_the_rules_again_and_its_held_events_come_back() -> None:
    topo = load_topology("active-standby")
    census = {
        "site": "site1",
        "events": 3,
        "last_ts": 99.0,
        "in_surviving_idbs": 1,
        "only_in_surviving_infomart": 0,
        "lost": ["site1-000000002", "site1-000000003"],
    }
    held = {"icon_queues": 1, "idbs": 0, "events": ["site1-000000003"]}
    history = [
        _entry(0.0, "run"),
        _entry(100.0, "step", step={"verb": "fail-site", "value": "site1", "options": {}}),
        _entry(100.0, "dr", procedure="fail-site", site="site1", census=census),
        _entry(200.0, "dr", procedure="activate-gim", site="site2"),
        _entry(40000.0, "dr", procedure="recover-site", site="site1", disks="kept", held=held),
        _entry(
            50000.0, "step", step={"verb": "partition", "value": ["site1", "site2"], "options": {}}
        ),
        _entry(90000.0, "step", step={"verb": "heal", "value": ["site1", "site2"], "options": {}}),
        _entry(95000.0, "final-settle"),
    ]
    prediction = predict(topo, history, threshold=28800.0, tolerance=60.0)
    assert prediction.verdict("site1", 50.0, "site1-000000002") == "lost"  # held nowhere
    assert prediction.verdict("site1", 60.0, "site1-000000003") == "kept"  # its queue held it
    # Waited for again from the recovery: cut off at 50000 s, stuck a threshold later,
    # back at the heal; what it emitted before the heal minus the threshold is lost.
    assert prediction.windows["site1"] == [(50000.0, 90000.0 - 28800.0)]
    # Retired in between: nothing judged, nothing lost, however long it was gone.
    assert prediction.verdict("site1", 20000.0) == "kept"
