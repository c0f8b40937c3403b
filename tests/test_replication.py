"""Streaming replication with the harness vocabulary: backup, init_from_backup, catch up,
promote, on real servers over loopback."""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg
import pytest

from testbed.backends.local import LocalBackend
from testbed.errors import ServerFailed
from testbed.operations.dr import statements_under_way
from testbed.postgres import Server, format_lsn, parse_lsn
from testbed.scenarios.blockage import Blockage
from testbed.scenarios.replication_watch import ReplicationWatch


@pytest.fixture
def pair(testbed_backend: LocalBackend) -> tuple[Server, Server]:
    primary = testbed_backend.new_server("infomart1", "site1", "infomart").init().start()
    primary.execute("CREATE TABLE facts (id int PRIMARY KEY, payload text)")
    primary.backup("b1")
    standby = testbed_backend.new_server("infomart2", "site2", "infomart")
    standby.init_from_backup(primary, "b1", streaming=True).start()
    return primary, standby


def test_lsn_text_round_trips() -> None:
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")


def test_a_standby_from_a_backup_streams_new_rows(pair: tuple[Server, Server]) -> None:
    primary, standby = pair
    assert standby.is_in_recovery()
    primary.execute("INSERT INTO facts SELECT g, 'x' FROM generate_series(1, 500) g")
    target = primary.current_lsn()
    reached = primary.wait_for_catchup(standby)
    assert reached >= target
    assert standby.replay_lsn() >= target
    assert standby.scalar("SELECT count(*) FROM facts") == 500
    sender = primary.execute("SELECT application_name, state FROM pg_stat_replication")
    assert sender == [("infomart2", "streaming")]


def test_a_standby_refuses_writes_until_promoted(pair: tuple[Server, Server]) -> None:
    primary, standby = pair
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        standby.execute("INSERT INTO facts VALUES (1, 'x')")
    primary.execute("INSERT INTO facts VALUES (1, 'from primary')")
    primary.wait_for_catchup(standby)
    standby.promote()
    assert not standby.is_in_recovery()
    standby.execute("INSERT INTO facts VALUES (2, 'after promotion')")
    assert standby.scalar("SELECT count(*) FROM facts") == 2


def test_a_promoted_standby_stays_primary_after_a_restart(pair: tuple[Server, Server]) -> None:
    _, standby = pair
    standby.promote()
    standby.restart()
    assert not standby.is_in_recovery()


def test_wait_for_catchup_times_out_with_the_lsns_when_the_standby_is_down(
    pair: tuple[Server, Server],
) -> None:
    primary, standby = pair
    standby.stop()
    primary.execute("INSERT INTO facts VALUES (1, 'x')")
    with pytest.raises(ServerFailed, match=r"did not replay .* within 1s"):
        primary.wait_for_catchup(standby, timeout=1)


def test_a_stopped_standby_catches_up_after_restart(pair: tuple[Server, Server]) -> None:
    primary, standby = pair
    standby.stop()
    primary.execute("INSERT INTO facts SELECT g, 'x' FROM generate_series(1, 100) g")
    standby.start()
    primary.wait_for_catchup(standby, timeout=30)
    assert standby.scalar("SELECT count(*) FROM facts") == 100


def test_promote_refuses_a_primary(pair: tuple[Server, Server]) -> None:
    primary, _ = pair
    with pytest.raises(ServerFailed, match="not a standby"):
        primary.promote()


def test_a_standby_can_dial_its_primary_through_another_address(
    testbed_backend: LocalBackend,
) -> None:
    primary = testbed_backend.new_server("p").init().start()
    primary.backup("b", via=f"localhost:{primary.port}")
    standby = testbed_backend.new_server("s")
    standby.init_from_backup(primary, "b", streaming=True, via=f"localhost:{primary.port}")
    standby.start()
    primary.execute("CREATE TABLE t AS SELECT 1 AS x")
    primary.wait_for_catchup(standby)
    conninfo = standby.scalar("SELECT conninfo FROM pg_stat_wal_receiver")
    assert "host=localhost" in conninfo


def test_a_stop_behind_a_black_holed_standby_is_made_immediate_and_keeps_every_commit(
    testbed_backend: LocalBackend,
) -> None:
    """A fast shutdown waits for its walsender to hand the shutdown checkpoint to the
    standby; behind a black hole that lasts until the replication timeout (30 s wall here,
    30 scenario hours at 1h = 1s). With patience, the stop is made immediate instead, and a
    restart recovers every committed row."""
    primary = testbed_backend.new_server("infomart1", "site1", "infomart").init().start()
    proxy = testbed_backend.start_proxy().create_proxy("repl", upstream=primary.address)
    via = f"127.0.0.1:{proxy.port}"
    primary.backup("b", via=via)
    standby = testbed_backend.new_server("infomart2", "site2", "infomart")
    standby.init_from_backup(primary, "b", streaming=True, via=via).start()
    primary.execute("CREATE TABLE facts AS SELECT g AS id FROM generate_series(1, 100) g")
    primary.wait_for_catchup(standby)
    for stream in ("upstream", "downstream"):
        proxy.add_toxic("timeout", stream=stream, timeout=0)
    primary.execute("INSERT INTO facts SELECT g FROM generate_series(101, 200) g")
    began = time.monotonic()
    primary.stop(patience=1.0)
    assert primary.state() == "stopped"
    assert time.monotonic() - began < 10.0  # not the replication timeout
    primary.start()
    assert primary.scalar("SELECT count(*) FROM facts") == 200


def test_a_walsender_is_no_statement_of_its_standby_still_under_way(
    pair: tuple[Server, Server],
) -> None:
    # A site's failure waits for the statements its dead clients sent to commit. The
    # walsender streaming to its dead standby is "active" for as long as it streams: it
    # must not count, or every such failure waits out the whole quiet timeout.
    primary, _ = pair
    deadline = time.monotonic() + 30
    # The fixture starts the standby; it connects on its own time.
    while primary.execute("SELECT state FROM pg_stat_replication") != [("streaming",)]:
        assert time.monotonic() < deadline, "the standby never streamed"
        time.sleep(0.05)
    assert statements_under_way(primary, ["infomart2"]) == 0
    # A statement of a client of the dead site, still running: that one counts.
    client = psycopg.connect(primary.conninfo(application_name="icon2b"), autocommit=True)

    def sleep() -> None:
        with contextlib.suppress(psycopg.errors.QueryCanceled):
            client.execute("SELECT pg_sleep(30)")

    sleeping = threading.Thread(target=sleep)
    sleeping.start()
    try:
        deadline = time.monotonic() + 10
        while statements_under_way(primary, ["infomart2", "icon2b"]) != 1:
            assert time.monotonic() < deadline, "the running statement was never counted"
            time.sleep(0.01)
    finally:
        client.cancel_safe()
        sleeping.join()
        client.close()


class _Pair:
    """The two servers as the replication watch looks them up: one site, no WAN proxy."""

    def __init__(self, primary: Server, standby: Server) -> None:
        self.standby_of = {standby.name: primary.name}
        self._servers = {primary.name: primary, standby.name: standby}

    def server(self, name: str) -> Server:
        return self._servers[name]

    def proxy_of(self, _standby: str, _primary: str) -> None:
        return None


def test_a_rewound_standby_that_replayed_all_is_not_taken_for_one_catching_up(
    pair: tuple[Server, Server],
) -> None:
    # After pg_rewind the old primary replays the new timeline from its own pg_wal, and its
    # walreceiver reports a receive position at the start of the segment it streams from,
    # behind everything the new primary sent, until the primary writes again. Taken for WAL
    # on the wire, that held the virtual clock until a wall-time status message (10 s).
    old, new = pair
    old.execute("INSERT INTO facts VALUES (1, 'before the fork')")
    old.wait_for_catchup(new)
    new.promote()
    new.execute("INSERT INTO facts VALUES (2, 'on the new timeline')")
    old.execute("INSERT INTO facts VALUES (3, 'lost with the old timeline')")
    old.rewind_from(new).start()
    deadline = time.monotonic() + 30
    while not old.streaming():
        assert time.monotonic() < deadline, "the rewound server never streamed"
        time.sleep(0.05)
    new.wait_for_catchup(old)
    assert old.scalar("SELECT count(*) FROM facts") == 2
    received, replayed = old.execute(
        "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text"
    )[0]
    if parse_lsn(received) >= parse_lsn(replayed):  # the primary wrote since (a checkpoint)
        pytest.skip("the rewound standby received WAL again: its stale position is gone")
    watch = ReplicationWatch(_Pair(new, old), Blockage(), lambda _a, _b: None)  # type: ignore[arg-type]
    try:
        assert not watch.moving(frozenset()), "a standby that replayed all still moving"
    finally:
        watch.close()
