"""Operator procedures on real servers through the real WAN proxy: the split-brain guard,
promotion after a disaster, a transfer and a switchover, and the consistency and
divergence reports they end with."""

from __future__ import annotations

import pytest

from testbed.deployment import Deployment
from testbed.errors import Refused, TestbedError
from testbed.netfault.wan import Wan
from testbed.operations.consistency import compare, divergence, table_differences
from testbed.operations.dr import Operator
from testbed.topology import INFOMART_DATABASE

FACTS = (
    "INSERT INTO fact_interaction (event_id, site, ts, payload, source, loaded_ts)"
    " SELECT 'e' || g, 'site1', g, 'p', 'icon1a', 0 FROM generate_series(%s::int, %s::int) g"
)


def _load_schema(deployment: Deployment) -> None:
    from testbed.pipeline.schema import INFOMART_DDL

    primary = deployment.server("infomart1")
    primary.execute(INFOMART_DDL, dbname=INFOMART_DATABASE)
    primary.execute(FACTS, (1, 100), dbname=INFOMART_DATABASE)
    primary.wait_for_catchup(deployment.server("infomart2"))


def test_promote_refuses_while_the_primary_answers(
    testbed_deployment: Deployment, testbed_operator: Operator
) -> None:
    recorded = []
    testbed_operator.record = lambda kind, **fields: recorded.append((kind, fields))
    with pytest.raises(Refused) as refused:
        testbed_operator.promote("site2")
    assert refused.value.exit_code == 1
    assert "split brain" in str(refused.value) and "\n" not in str(refused.value)
    assert testbed_deployment.server("infomart2").is_in_recovery()
    assert recorded[0][0] == "dr-refused"


def test_promote_refuses_during_an_outage_because_the_primary_is_not_fenced(
    testbed_deployment: Deployment, testbed_operator: Operator, testbed_wan: Wan
) -> None:
    testbed_wan.partition("site1", "site2", mode="reset")
    with pytest.raises(Refused, match="not fenced"):
        testbed_operator.promote("site2")
    assert testbed_deployment.server("infomart2").is_in_recovery()


def test_the_guards_probe_is_not_sent_where_the_faults_in_force_block_it(
    testbed_deployment: Deployment, testbed_operator: Operator, testbed_wan: Wan
) -> None:
    # Behind a black hole the probe could only wait out its connect timeout (2 s of wall
    # time, with the virtual clock held): the engine's view of the faults answers it.
    asked = []

    def blocked(target: str, route: str | None) -> bool:
        asked.append((target, route))
        return route == "site1|site2"

    testbed_operator.blocked = blocked
    testbed_wan.partition("site1", "site2", mode="blackhole")
    with pytest.raises(Refused, match="not fenced"):
        testbed_operator.promote("site2")
    assert asked == [("infomart1", "site1|site2")]
    # The faults' view is all it goes by: where it says blocked, no probe is sent at all.
    testbed_wan.heal()
    with pytest.raises(Refused, match="not fenced"):
        testbed_operator.promote("site2")
    testbed_operator.blocked = lambda _target, _route: False
    with pytest.raises(Refused, match="split brain"):
        testbed_operator.promote("site2")


def test_a_forced_promotion_during_an_outage_is_split_brain(
    testbed_deployment: Deployment, testbed_operator: Operator, testbed_wan: Wan
) -> None:
    _load_schema(testbed_deployment)
    testbed_wan.partition("site1", "site2", mode="blackhole")
    recorded = []
    testbed_operator.record = lambda kind, **fields: recorded.append(kind)
    facts = testbed_operator.promote("site2", force=True)
    assert facts["forced"] and "dr-forced" in recorded
    old, new = testbed_deployment.server("infomart1"), testbed_deployment.server("infomart2")
    old.execute(FACTS, (101, 150), dbname=INFOMART_DATABASE)
    new.execute(FACTS, (101, 120), dbname=INFOMART_DATABASE)
    testbed_wan.heal()
    split = divergence(old, new)
    assert split["diverged"] and not split["replication_can_resume"]
    assert split["promoted_timeline"] == 2
    assert split["old_wal_past_fork_bytes"] > 0
    assert split["fact_rows_only_in"] == {"infomart1": 50, "infomart2": 20}
    assert len(split["first_rows_only_in"]["infomart1"]) == 5


def test_a_split_whose_gims_loaded_the_same_facts_still_diverged(
    testbed_deployment: Deployment, testbed_operator: Operator, testbed_wan: Wan
) -> None:
    """Two GIMs in service on a split that happen to load the same facts in the same
    order (the same keys): their Info Marts still differ in what each GIM wrote of its own
    state, and the split is reported as such, not as two equal Info Marts."""
    _load_schema(testbed_deployment)
    testbed_wan.partition("site1", "site2", mode="reset")
    testbed_operator.promote("site2", force=True)
    old, new = testbed_deployment.server("infomart1"), testbed_deployment.server("infomart2")
    same_keys = (
        "INSERT INTO fact_interaction (interaction_key, event_id, site, ts, payload, source,"
        " loaded_ts) SELECT 1000 + g, 'e' || g, 'site1', g, 'p', 'icon1a', 0"
        " FROM generate_series(101, 150) g"
    )
    for server, cycles in ((old, 7), (new, 3)):
        server.execute(same_keys, dbname=INFOMART_DATABASE)
        server.execute(
            "INSERT INTO gim_state (id, cycles, updated_ts) VALUES (1, %s, 0)",
            (cycles,),
            dbname=INFOMART_DATABASE,
        )
    testbed_wan.heal()
    split = divergence(old, new)
    assert split["fact_rows_only_in"] == {"infomart1": 0, "infomart2": 0}
    assert split["differing_tables"] == ["gim_state"]
    assert split["diverged"]


def test_after_a_site_fails_promotion_is_allowed_and_roles_change(
    testbed_deployment: Deployment, testbed_operator: Operator
) -> None:
    _load_schema(testbed_deployment)
    failed = testbed_operator.fail_site("site1")
    assert set(failed["killed"]) == {"idb1", "infomart1"}
    with pytest.raises(Refused, match="failed already"):
        testbed_operator.fail_site("site1")
    testbed_operator.promote("site2")
    standby = testbed_deployment.server("infomart2")
    assert not standby.is_in_recovery()
    assert standby.scalar("SELECT count(*) FROM fact_interaction", dbname=INFOMART_DATABASE) == 100
    assert testbed_deployment.standby_of == {}
    with pytest.raises(Refused, match="not a standby"):
        testbed_operator.promote("site2")
    with pytest.raises(Refused, match="pipeline"):
        testbed_operator.activate_gim("site2")


def test_return_to_normal_transfer_then_switchover_keeps_every_row(
    testbed_deployment: Deployment, testbed_operator: Operator, testbed_wan: Wan
) -> None:
    _load_schema(testbed_deployment)
    testbed_operator.fail_site("site1")
    testbed_operator.promote("site2")
    with pytest.raises(Refused, match=r"exists already"):
        testbed_operator.add_site("site2")
    added = testbed_operator.add_site("site3")
    assert added["servers"] == ["idb3", "infomart3"]
    testbed_wan.degrade("site2", "site3", bandwidth=20000)  # KB/s, on the new link
    moved = testbed_operator.transfer("site2", "site3")
    assert moved["bytes"] > 1_000_000
    # The rate is the bytes on the wire: both of pg_basebackup's connections share the link.
    assert moved["rate_basis"] == "bytes through the WAN proxy"
    assert moved["link_rate_kb_s"] == 20000
    assert moved["wan_bytes"] > 1_000_000
    assert moved["rate_mb_s"] <= 20.0 * 1.05, moved
    assert moved["link_mb_s"] <= 20.0 * 1.05, moved
    # The route the copy added after the degrade joined the link (it did not bypass it).
    assert moved["link_mb_s"] >= moved["rate_mb_s"] * 0.95, moved
    with pytest.raises(Refused, match="standby of infomart2 already"):
        testbed_operator.transfer("site2", "site3")
    testbed_wan.heal()
    new_primary = testbed_deployment.server("infomart2")
    new_primary.execute(FACTS, (101, 130), dbname=INFOMART_DATABASE)
    switched = testbed_operator.switchover("site3")
    assert switched["rejoined_by"] == "follow"
    assert testbed_deployment.standby_of == {"infomart2": "infomart3"}
    infomart3 = testbed_deployment.server("infomart3")
    infomart3.execute(FACTS, (131, 140), dbname=INFOMART_DATABASE)
    result = compare(infomart3, testbed_deployment.server("infomart2"))
    assert result["consistent"], result
    assert result["sums"]["infomart3"]["fact_interaction"][0] == 140


def test_table_differences_lists_the_rows_only_in_each(
    testbed_deployment: Deployment,
) -> None:
    _load_schema(testbed_deployment)
    a, b = testbed_deployment.server("infomart1"), testbed_deployment.server("idb1")
    from testbed.pipeline.schema import INFOMART_DDL

    b.create_database(INFOMART_DATABASE)
    b.execute(INFOMART_DDL, dbname=INFOMART_DATABASE)
    b.execute(FACTS, (1, 97), dbname=INFOMART_DATABASE)
    found = table_differences(a, b, "fact_interaction")
    assert found["only_in_infomart1"] == 3 and found["only_in_idb1"] == 0
    shown = " ".join(found["first"]["infomart1"])
    assert all(f",e{n}," in shown for n in (98, 99, 100)), shown


def test_routes_added_later_carry_the_faults_of_their_link(
    testbed_deployment: Deployment, testbed_operator: Operator, testbed_wan: Wan
) -> None:
    testbed_operator.fail_site("site1")
    testbed_operator.promote("site2")
    testbed_operator.add_site("site3")
    testbed_wan.partition("site2", "site3", mode="reset")
    testbed_wan.degrade("site2", "site3", latency=50)
    address = testbed_deployment.ensure_route("infomart3", "infomart2")
    proxy = testbed_wan.client.proxy("infomart3-to-infomart2")
    assert proxy.listen == address
    assert not proxy.enabled
    assert {t.name for t in proxy.toxics} == {"wan-latency-upstream", "wan-latency-downstream"}
    testbed_wan.heal()
    assert testbed_wan.residue() == []


def test_unknown_sites_are_refused_with_the_known_ones(testbed_operator: Operator) -> None:
    with pytest.raises(TestbedError, match=r"unknown site .site9.*site1, site2"):
        testbed_operator.promote("site9")


@pytest.mark.parametrize("method", ["rewind", "basebackup"])
def test_a_recovered_sites_old_primary_is_kept_out_until_rebuilt(
    testbed_deployment: Deployment, testbed_operator: Operator, method: str
) -> None:
    _load_schema(testbed_deployment)
    testbed_operator.fail_site("site1")
    testbed_operator.promote("site2")
    new_primary = testbed_deployment.server("infomart2")
    new_primary.execute(FACTS, (101, 5000), dbname=INFOMART_DATABASE)  # past the fork
    with pytest.raises(Refused, match="has not failed"):
        testbed_operator.recover_site("site2")
    recovered = testbed_operator.recover_site("site1", disks="kept")
    with pytest.raises(Refused, match="not an old primary"):
        testbed_operator.transfer("site1", "site2", method="rewind")
    assert recovered["left_behind"] == {"infomart1": "infomart2"}
    old = testbed_deployment.server("infomart1")
    # Back on its old disks: what it had, on the timeline the promotion left.
    assert old.scalar("SELECT count(*) FROM fact_interaction", dbname=INFOMART_DATABASE) == 100
    assert not old.is_in_recovery()
    moved = testbed_operator.transfer("site2", "site1", method=method)
    assert moved["method"] == method
    assert moved["wan_bytes"] > 0, moved
    assert testbed_deployment.standby_of["infomart1"] == "infomart2"
    assert "infomart1" not in testbed_deployment.superseded
    new_primary.execute(FACTS, (5001, 5010), dbname=INFOMART_DATABASE)
    result = compare(new_primary, old)
    assert result["consistent"], result
    assert result["sums"]["infomart2"]["fact_interaction"][0] == 5010
