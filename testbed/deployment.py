"""Bringing a topology up on a backend: servers, their databases, and the standby.

Independent servers start in parallel; a standby is then made from a base backup of its
primary and streams from it. This is the same sequence whichever backend runs the servers.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from testbed.postgres import Server
from testbed.topology import ServerSpec, Topology

INITIAL_BACKUP = "initial"


class Backend(Protocol):
    name: str
    id: str
    servers: dict[str, Server]

    def new_server(
        self, name: str, site: str = ..., role: str = ..., port: int | None = ...
    ) -> Server: ...
    def preflight(self, topology: Topology) -> None: ...
    def close(self) -> None: ...


@dataclass
class Deployment:
    """A topology running on a backend: its servers by name."""

    topology: Topology
    backend: Backend

    @property
    def servers(self) -> dict[str, Server]:
        return self.backend.servers

    def server(self, name: str) -> Server:
        return self.backend.servers[name]

    def rows(self) -> list[dict[str, object]]:
        """One row per server: site, role, name, host:port, pid (the `testbed up` table)."""
        return [
            {
                "site": spec.site,
                "role": spec.describe_role(),
                "name": spec.name,
                "address": self.server(spec.name).address,
                "pid": self.server(spec.name).pid,
            }
            for spec in self.topology.servers
            if spec.name in self.backend.servers
        ]


Progress = Callable[[str], None]


def bring_up(topology: Topology, backend: Backend, progress: Progress | None = None) -> Deployment:
    """Start every server of `topology` on `backend`; standbys stream from their primary."""
    say = progress or (lambda _message: None)
    backend.preflight(topology)  # refuse before starting anything, not halfway through
    primaries, standbys = topology.start_order()

    def start_primary(spec: ServerSpec) -> None:
        server = backend.new_server(spec.name, spec.site, spec.role, spec.port).init().start()
        for database in spec.databases:
            server.create_database(database)
        say(f"{spec.name} ({spec.describe_role()}) ready on {server.address}")

    _in_parallel(start_primary, primaries)

    def start_standby(spec: ServerSpec) -> None:
        primary = backend.servers[spec.standby_of]
        backup = f"{INITIAL_BACKUP}-for-{spec.name}"
        primary.backup(backup)
        standby = backend.new_server(spec.name, spec.site, spec.role, spec.port)
        standby.init_from_backup(primary, backup, streaming=True).start()
        say(f"{spec.name} ({spec.describe_role()}) streaming on {standby.address}")

    _in_parallel(start_standby, standbys)
    return Deployment(topology, backend)


def _in_parallel(work: Callable[[ServerSpec], None], specs: tuple[ServerSpec, ...]) -> None:
    """Run `work` for every spec; all finish (or fail) before the first error is raised,
    so the backend knows about every server started before it cleans up."""
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        futures = [pool.submit(work, spec) for spec in specs]
    for future in futures:
        future.result()
