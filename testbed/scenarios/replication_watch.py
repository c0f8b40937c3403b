"""Streaming replication as the virtual clock sees it: running while it moves bytes.

A standby is no participant of the clock: PostgreSQL streams on its own, in wall time. If
the time could jump while WAL is on its way, how far a standby had come at an instant (what
a disaster's census finds in it) would depend on how busy the machine was. So a standby
counts as running, and holds the time, while its primary's walsender has WAL still to send,
or WAL is on the wire and not yet received, or received and not yet replayed, unless the
WAN proxy holds those bytes until a later instant (a latency or bandwidth toxic: the time
may jump to their release) or the faults block the route or freeze either server (then
nothing moves until a step changes that).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import psycopg

from testbed.deployment import Deployment
from testbed.scenarios.blockage import Blockage
from testbed.scenarios.kept_connections import KeptConnections

# The slowest walsender's position, per primary: what is still to be sent to a standby.
# ... and the furthest one's, in the same round trip (the probe runs at every instant).
SENT_SQL = (
    "SELECT pg_current_wal_flush_lsn() - min(sent_lsn), count(*), max(sent_lsn)::text"
    " FROM pg_stat_replication WHERE state = 'streaming'"
)
# What a standby has (received, or replayed: a server rewound or rebuilt replays WAL from its
# own pg_wal, and its walreceiver reports the start of the segment it streams from until
# the primary writes again), and how much of what it received it has yet to replay.
STANDBY_SQL = (
    "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text,"
    " pg_last_wal_replay_lsn() - pg_last_wal_receive_lsn()"
)


class ReplicationWatch:
    """`moving(held)`: whether any standby is catching up on its own (the clock's probe)."""

    def __init__(
        self,
        deployment: Deployment,
        blockage: Blockage,
        route_of: Callable[[str, str], str | None],
    ) -> None:
        self.deployment = deployment
        self.blockage = blockage
        self.route_of = route_of  # the WAN link between two servers (None: one site)
        self._conns = KeptConnections(deployment, "testbed-clock-watch")

    def moving(self, held: frozenset[str]) -> bool:
        for standby, primary in list(self.deployment.standby_of.items()):
            with contextlib.suppress(psycopg.Error, OSError, KeyError):
                if self._catching_up(standby, primary, held):
                    return True
        return False

    def _catching_up(self, standby: str, primary: str, held: frozenset[str]) -> bool:
        if {standby, primary} & self.blockage.frozen:
            return False  # nothing moves, and a query to it would hang
        if self.blockage.blocked(standby, self.route_of(standby, primary)):
            return False  # black-holed: only a heal moves it
        if self.deployment.proxy_of(standby, primary) in held:
            return False  # the proxy holds its bytes: due at their release
        if self.deployment.server(standby).state() != "running":
            # Not yet a standby (a transfer is building it): the walsender a base backup
            # streams its WAL through is not one this probe may count as catching up.
            return False
        # A primary not running is not asked (NotRunning, caught by `moving`: not moving).
        unsent, walsenders, sent = self._conns.row(primary, SENT_SQL)
        if not walsenders:
            return False  # not streaming (cut, or reconnecting): a retry is a step away
        if unsent and unsent > 0:
            return True
        received, unreplayed = self._conns.row(standby, STANDBY_SQL)
        if unreplayed and unreplayed < 0:
            return True
        return bool(sent and received and _lsn(received) < _lsn(sent))

    def close(self) -> None:
        self._conns.close()


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
