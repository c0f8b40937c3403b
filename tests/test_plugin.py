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
