"""One open connection per server for queries the engine repeats at every instant.

The replication watch and the sampler ask the same few servers the same few questions
hundreds of times a run; a connection of their own each time (a backend started, then
ended) cost ~3 ms apiece, most of a virtual-clock instant. A connection that fails is
dropped and made anew on the next question: a server restarted or cut off answers again
once it can.
"""

from __future__ import annotations

import contextlib

import psycopg

from testbed.deployment import Deployment

CONNECT_TIMEOUT_S = 2


class NotRunning(OSError):
    """The server is stopped or paused: nothing to ask it now."""


class KeptConnections:
    """Not thread-safe: one per thread that asks."""

    def __init__(self, deployment: Deployment, application_name: str) -> None:
        self.deployment = deployment
        self.application_name = application_name
        self._conns: dict[str, psycopg.Connection] = {}

    def row(self, server: str, sql: str) -> tuple:
        """The first row `sql` returns on `server` (empty if none). A server that is not
        running is not asked: a paused one never answers, and a kept connection has no
        deadline (the clock's thread would wait on it for ever)."""
        state = self.deployment.server(server).state()
        if state != "running":
            raise NotRunning(f"{server} is {state}")
        conn = self._conns.get(server)
        if conn is None or conn.closed:
            conn = self._conns[server] = self.deployment.server(server).connect(
                connect_timeout=CONNECT_TIMEOUT_S, application_name=self.application_name
            )
        try:
            row = conn.execute(sql).fetchone()
        except (psycopg.Error, OSError):
            conn.close()
            self._conns.pop(server, None)
            raise
        return tuple(row) if row is not None else ()

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                conn.close()
        self._conns.clear()
