"""The pytest fixtures users get from the plugin, used as the README shows."""

from __future__ import annotations

from testbed.deployment import Deployment


def test_the_standby_follows(testbed_deployment: Deployment) -> None:
    primary = testbed_deployment.server("infomart1")
    standby = testbed_deployment.server("infomart2")
    primary.execute("CREATE TABLE t AS SELECT 1 AS x", dbname="infomart")
    primary.wait_for_catchup(standby)
    assert standby.scalar("SELECT x FROM t", dbname="infomart") == 1


def test_the_deployment_has_every_database_of_the_topology(testbed_deployment: Deployment) -> None:
    for spec in testbed_deployment.topology.servers:
        server = testbed_deployment.server(spec.name)
        names = {row[0] for row in server.execute("SELECT datname FROM pg_database")}
        assert set(spec.databases) <= names, spec.name
    assert testbed_deployment.server("infomart2").is_in_recovery()


def test_run_scenario_returns_the_checked_outcome_and_records_figures(
    run_scenario, request
) -> None:
    outcome = run_scenario("normal-operation")
    assert outcome.passed, [c.message for c in outcome.checks if not c.passed]
    assert outcome.figures["duplicates"] == 0
    names = {name for name, _ in request.node.user_properties}
    assert {"lost_events", "duplicates", "rto_s", "report"} <= names


def test_the_wan_and_pipeline_fixtures_work_together(testbed_wan, testbed_pipeline) -> None:
    testbed_pipeline.clock.sleep(1800)
    testbed_wan.partition("site1", "site2", mode="blackhole")
    testbed_pipeline.clock.sleep(1800)
    assert testbed_wan.residue()
    testbed_wan.heal()
    figures = testbed_pipeline.settle(60)
    assert figures["transform_boundary"] is not None
    ledger = {e.id for e in testbed_pipeline.ledger()}
    assert ledger == {row[0] for row in testbed_pipeline.facts()}
