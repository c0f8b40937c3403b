"""Site partitions and WAN degradation on the default topology: real PostgreSQL servers,
real replication, every cross-site connection through the run's proxy server."""

from __future__ import annotations

import statistics
import threading
import time

import psycopg
import pytest

from testbed.deployment import Deployment
from testbed.errors import TestbedError
from testbed.postgres import deadline, split_address


@pytest.fixture
def wan_deployment(testbed_deployment: Deployment) -> Deployment:
    assert testbed_deployment.wan is not None
    return testbed_deployment


def connect_via(deployment: Deployment, client: str, server: str, **kw) -> psycopg.Connection:
    host, port = split_address(deployment.address_for(client, server))
    return psycopg.connect(
        deployment.server(server).conninfo(), host=host, port=port, autocommit=True, **kw
    )


def test_every_cross_site_route_goes_through_a_proxy(wan_deployment: Deployment) -> None:
    d = wan_deployment
    assert d.address_for("gim1", "idb2") != d.server("idb2").address
    assert d.address_for("gim1", "idb1") == d.server("idb1").address  # same site: direct
    with connect_via(d, "gim1", "idb2") as conn:
        assert conn.execute("SHOW port").fetchone() == (str(d.server("idb2").port),)
    _, proxy_port = split_address(d.address_for("infomart2", "infomart1"))
    receiver = d.server("infomart2").scalar("SELECT conninfo FROM pg_stat_wal_receiver")
    assert f"port={proxy_port}" in receiver


def test_a_blackhole_makes_a_query_with_a_2s_timeout_fail_in_2_to_3_s(
    wan_deployment: Deployment,
) -> None:
    conn = connect_via(wan_deployment, "gim1", "idb2")
    conn.execute("SET statement_timeout = '2s'")
    wan_deployment.wan.partition("site1", "site2", mode="blackhole")
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError), deadline(conn, 2.5):
        conn.execute("SELECT 1")
    assert 2.0 <= time.monotonic() - start < 3.0
    conn.close()
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        connect_via(wan_deployment, "gim1", "idb2", connect_timeout=2)
    assert 2.0 <= time.monotonic() - start < 3.0


def test_a_reset_partition_refuses_and_cuts_at_once(wan_deployment: Deployment) -> None:
    conn = connect_via(wan_deployment, "icon1b", "idb2")
    wan_deployment.wan.partition("site1", "site2", mode="reset")
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="refused"):
        connect_via(wan_deployment, "icon1b", "idb2", connect_timeout=2)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_heal_restores_new_connections_at_once(wan_deployment: Deployment, mode: str) -> None:
    wan_deployment.wan.partition("site1", "site2", mode=mode)
    wan_deployment.wan.heal("site1", "site2")
    start = time.monotonic()
    with connect_via(wan_deployment, "gim1", "idb2", connect_timeout=2) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert time.monotonic() - start < 0.5
    assert wan_deployment.wan.residue() == []


def test_replication_stops_during_a_partition_and_catches_up_after_heal(
    wan_deployment: Deployment,
) -> None:
    primary, standby = wan_deployment.server("infomart1"), wan_deployment.server("infomart2")
    primary.execute("CREATE TABLE facts (id int)", dbname="infomart")
    primary.wait_for_catchup(standby)
    wan_deployment.wan.partition("site1", "site2", mode="blackhole")
    primary.execute("INSERT INTO facts SELECT generate_series(1, 100)", dbname="infomart")
    with pytest.raises(TestbedError, match="did not replay"):
        primary.wait_for_catchup(standby, timeout=1.5)
    wan_deployment.wan.heal()
    primary.wait_for_catchup(standby, timeout=30)
    assert standby.scalar("SELECT count(*) FROM facts", dbname="infomart") == 100


def test_a_one_way_partition_cuts_only_its_direction(wan_deployment: Deployment) -> None:
    primary, standby = wan_deployment.server("infomart1"), wan_deployment.server("infomart2")
    primary.execute("CREATE TABLE facts (id int)", dbname="infomart")
    primary.wait_for_catchup(standby)
    # WAL travels site1 -> site2; only the standby's feedback travels the other way.
    wan_deployment.wan.partition("site1", "site2", mode="blackhole", direction="site2->site1")
    primary.execute("INSERT INTO facts VALUES (1)", dbname="infomart")
    primary.wait_for_catchup(standby, timeout=10)
    wan_deployment.wan.heal()
    wan_deployment.wan.partition("site1", "site2", mode="blackhole", direction="site1->site2")
    primary.execute("INSERT INTO facts VALUES (2)", dbname="infomart")
    with pytest.raises(TestbedError, match="did not replay"):
        primary.wait_for_catchup(standby, timeout=1.5)
    wan_deployment.wan.heal()
    primary.wait_for_catchup(standby, timeout=30)


def test_degrade_adds_latency_both_ways(wan_deployment: Deployment) -> None:
    with connect_via(wan_deployment, "gim1", "idb2") as conn:
        wan_deployment.wan.degrade("site1", "site2", latency=50)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            conn.execute("SELECT 1")
            times.append(time.perf_counter() - start)
    assert 0.100 <= statistics.median(times) < 0.150  # 50 ms each way


def test_every_fault_is_recorded_and_residue_lists_what_is_left(
    wan_deployment: Deployment,
) -> None:
    wan = wan_deployment.wan
    wan.partition("site1", "site2", mode="reset")
    wan.degrade("site1", "site2", bandwidth=100)
    residue = wan.residue()
    assert any("disabled" in line for line in residue)
    assert any("bandwidth" in line for line in residue)
    wan.heal()
    assert wan.residue() == []
    assert [f.action for f in wan.history] == ["partition", "degrade", "heal"]
    assert wan.history[0].detail == {"mode": "reset", "direction": "both"}
    assert "infomart2-to-infomart1" in wan.history[0].proxies


def test_bad_partitions_are_refused(wan_deployment: Deployment) -> None:
    with pytest.raises(TestbedError, match="no WAN route touches site 'site9'"):
        wan_deployment.wan.partition("site1", "site9")
    with pytest.raises(TestbedError, match="mode 'drop'"):
        wan_deployment.wan.partition("site1", "site2", mode="drop")  # type: ignore[arg-type]
    with pytest.raises(TestbedError, match="direction"):
        wan_deployment.wan.partition("site1", "site2", direction="site1->site3")


# --- a link's bandwidth is one capacity -------------------------------------------------------

LINK_KB_S = 2000


def _sent_each_way(wan, source: str, dest: str) -> int:
    """Bytes the proxies sent on every stream that carries `source` -> `dest` traffic,
    from the proxy's own per-proxy counters (not the link's)."""
    sent = wan.traffic().proxies
    return sum(sent.get(pair, 0) for pair in wan.streams_from(source, dest))


def _pull(deployment: Deployment, client: str, server: str, stop: threading.Event) -> None:
    """A large query result, server to client, until told to stop."""
    with connect_via(deployment, client, server) as conn:
        while not stop.is_set():
            with conn.cursor() as cursor:
                cursor.execute("SELECT repeat('x', 2000) FROM generate_series(1, 2000)")
                cursor.fetchall()


def _write_wal(server, stop: threading.Event) -> None:
    """WAL for the standby to stream, until told to stop."""
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ballast (filler text)")
        while not stop.is_set():
            conn.execute("INSERT INTO ballast SELECT repeat('y', 2000) FROM generate_series(1, 99)")


def test_two_streams_and_a_base_backup_share_the_link_rate_each_way(
    wan_deployment: Deployment,
) -> None:
    """The acceptance case: replication, query results and pg_basebackup's two connections
    together stay within the link's rate, each way, measured on the proxies' own counters."""
    d, wan = wan_deployment, wan_deployment.wan
    wan.degrade("site1", "site2", bandwidth=LINK_KB_S)
    assert wan.history[-1].detail["bandwidth_shared"] is True
    stop = threading.Event()
    flows = [
        threading.Thread(target=_write_wal, args=(d.server("infomart1"), stop)),  # 1 -> 2
        threading.Thread(target=_pull, args=(d, "gim2", "idb1", stop)),  # 1 -> 2
        threading.Thread(target=_pull, args=(d, "gim1", "idb2", stop)),  # 2 -> 1
        threading.Thread(target=_pull, args=(d, "icon1b", "idb2", stop)),  # 2 -> 1
    ]
    via = d.address_for("infomart2", "infomart1")
    backup = threading.Thread(target=d.server("infomart1").backup, args=("shared-link", via))
    for flow in [*flows, backup]:
        flow.start()
    try:
        time.sleep(1.0)  # every flow under way, the link's burst allowance spent
        start = time.monotonic()
        before = {w: _sent_each_way(wan, *w) for w in (("site1", "site2"), ("site2", "site1"))}
        time.sleep(4.0)
        after = {w: _sent_each_way(wan, *w) for w in before}
        elapsed = time.monotonic() - start
        assert backup.is_alive(), "the base backup ended inside the window: make it larger"
    finally:
        stop.set()
        for flow in flows:
            flow.join(30)
        wan.heal()
        backup.join(120)
    for way, sent in before.items():
        rate_kb_s = (after[way] - sent) / elapsed / 1000
        assert rate_kb_s <= LINK_KB_S * 1.05, f"{way}: {rate_kb_s:.0f} KB/s over the link"
        assert rate_kb_s >= LINK_KB_S * 0.8, f"{way}: {rate_kb_s:.0f} KB/s, the link sat idle"
