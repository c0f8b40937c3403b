"""`testbed plan outage` and `testbed plan SCENARIO`: the rules applied to a timeline as
written, with no server started, agreeing event by event with what a run's ledger holds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from testbed.cli.plan import plan
from testbed.pipeline.workload import schedule
from testbed.scenarios.outage_plan import outage_steps, plan_timeline
from testbed.scenarios.spec import Step
from testbed.topology import default_topology, load_topology

H = 3600.0


def _events_between(site: str, start: float, end: float, rate: float, seed: int) -> int:
    count = 0
    for event in schedule(site, rate, seed):
        if event.ts >= end:
            return count
        count += event.ts >= start


def test_an_outage_longer_than_the_threshold_loses_the_rule_window() -> None:
    result = plan_timeline("o", default_topology(), outage_steps(H, 11 * H), 8 * H, 600, 1)
    [sites] = result.infomarts.values()
    site1, site2 = sites
    assert site1.lost_windows == [] and site1.delayed == []  # GIM's own site
    assert site2.lost_windows == [(H, 4 * H)]  # [outage start, return - threshold)
    assert site2.lost_s == 3 * H
    assert site2.lost_events == _events_between("site2", H, 4 * H, 600, 1)
    assert site2.delayed == [(H, 12 * H)] and site2.caught_up_at == 12 * H


def test_an_outage_shorter_than_the_threshold_only_delays() -> None:
    result = plan_timeline("o", default_topology(), outage_steps(H, 7 * H), 8 * H, 600, 1)
    site2 = next(iter(result.infomarts.values()))[1]
    assert site2.lost_windows == [] and site2.lost_events == 0
    assert site2.delayed == [(H, 8 * H)]


def test_in_active_active_each_info_mart_loses_the_other_site() -> None:
    topology = load_topology("active-active")
    result = plan_timeline("o", topology, outage_steps(H, 11 * H), 8 * H, 600, 1)
    assert set(result.infomarts) == {"infomart1", "infomart2"}
    lost = {im: {s.site: s.lost_windows for s in sites} for im, sites in result.infomarts.items()}
    assert lost["infomart1"] == {"site1": [], "site2": [(H, 4 * H)]}
    assert lost["infomart2"] == {"site1": [(H, 4 * H)], "site2": []}


def test_a_disaster_in_the_timeline_says_a_plan_cannot_count_it() -> None:
    steps = [Step(H, "fail-site", "site1", {}), Step(H, "promote", "site2", {})]
    result = plan_timeline("dr", default_topology(), steps, 8 * H, 600, 1)
    assert any("only a run counts that" in note for note in result.notes)


def test_cli_outage_json_answers_with_site_2s_window() -> None:
    result = CliRunner().invoke(plan, ["outage", "--duration", "11h", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    [sites] = data["infomarts"].values()
    site2 = next(s for s in sites if s["site"] == "site2")
    assert site2["lost_windows"] == [[H, 4 * H]] and site2["lost_hours"] == 3
    assert site2["lost_events"] > 0


def test_cli_plans_a_catalog_scenario_as_its_run_would_emit_it() -> None:
    result = CliRunner().invoke(plan, ["wan-outage-long", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    site2 = next(s for s in data["infomarts"]["infomart1"] if s["site"] == "site2")
    assert site2["lost_windows"] == [[H, 4 * H]]
    # The scenario's workload: 600/h, its seed; the run's ledger holds the same events.
    assert site2["lost_events"] == _events_between("site2", H, 4 * H, 600, 7)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["outage", "--duration", "long"], "'long' is not a duration"),
        (["outage", "--duration", "11h", "--rate", "lots"], "workload 'lots'"),
        (["no-such-scenario"], "unknown scenario 'no-such-scenario'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(plan, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
