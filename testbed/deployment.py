"""Bringing a topology up on a backend: servers, their databases, the WAN and the standby.

Independent servers start in parallel; then every cross-site route gets its proxy on the
run's WAN proxy server; then each standby is made from a base backup of its primary taken
through the WAN, and streams from it through the WAN. This is the same sequence whichever
backend runs the servers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from testbed.errors import TestbedError
from testbed.netfault.client import ToxiproxyClient
from testbed.netfault.wan import RouteProxy, Wan
from testbed.postgres import Server
from testbed.topology import (
    Route,
    ServerSpec,
    Topology,
    proxy_name,
    topology_from_dict,
    topology_to_dict,
)

INITIAL_BACKUP = "initial"


class Backend(Protocol):
    name: str
    servers: dict[str, Server]
    passfile: Path  # the run's libpq password file (testbed.credentials)

    @property
    def id(self) -> str: ...

    def new_server(
        self, name: str, site: str = ..., role: str = ..., port: int | None = ...
    ) -> Server: ...
    def start_proxy(self) -> ToxiproxyClient: ...
    def preflight(self, topology: Topology) -> None: ...
    def route_listen(self) -> str: ...  # a proxy's listen address, as the proxy sees it
    def upstream(self, server: str) -> str: ...  # a server's address, as the proxy sees it
    def published(self, listen: str) -> str: ...  # a listen address, as clients see it
    def close(self) -> None: ...


@dataclass
class Deployment:
    """A topology running on a backend: its servers by name, and the WAN between its sites."""

    topology: Topology
    backend: Backend
    wan: Wan | None = None
    route_addresses: dict[tuple[str, str], str] | None = None
    # Replication as it is now, which operator procedures change: standby -> its primary.
    standby_of: dict[str, str] = field(default_factory=dict)
    # A standby promoted while its primary was still running (forced): new -> old primary.
    promoted_from: dict[str, str] = field(default_factory=dict)
    failed_sites: set[str] = field(default_factory=set)
    # A lost site whose role a new site took (`add-site`): lost site -> its replacement.
    replaced_by: dict[str, str] = field(default_factory=dict)
    # An old primary whose standby was promoted past it: its timeline was left behind, so
    # it must not take writes again until rebuilt from the new primary. old -> new.
    superseded: dict[str, str] = field(default_factory=dict)
    # How often each server was rebuilt empty under its old name (a site recovered
    # without its disks): a new database with new transaction ids, a new source for GIM.
    incarnation: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.standby_of:
            self.standby_of = {s.name: s.standby_of for s in self.topology.servers if s.standby_of}

    @property
    def servers(self) -> dict[str, Server]:
        return self.backend.servers

    def server(self, name: str) -> Server:
        return self.backend.servers[name]

    def address_for(self, client: str, server: str) -> str:
        """Where `client` dials `server`: through the WAN proxy when they are at different
        sites, straight to the server otherwise. Every component connects through this."""
        routed = (self.route_addresses or {}).get((client, server))
        return routed or self.server(server).address

    def proxy_of(self, client: str, server: str) -> str | None:
        """The WAN proxy `client` dials `server` through (None: they share a site)."""
        routed = (client, server) in (self.route_addresses or {})
        return proxy_name(client, server) if routed else None

    def ensure_route(self, client: str, server: str, purpose: str = "replication") -> str:
        """Where `client` dials `server`, adding a WAN proxy when the route crosses sites
        and has none yet (a replacement site, a reversed replication after switchover)."""
        site_of = self.topology.site_of()
        if site_of[client] == site_of[server] or (client, server) in (self.route_addresses or {}):
            return self.address_for(client, server)
        if self.wan is None:
            raise TestbedError("this deployment has no WAN to route through")
        route = Route(client, site_of[client], server, site_of[server], purpose)  # type: ignore[arg-type]
        backend = self.backend
        proxy = self.wan.client.create_proxy(
            route.name, backend.upstream(server), listen=backend.route_listen()
        )
        assert self.route_addresses is not None
        self.route_addresses[(client, server)] = backend.published(proxy.listen)
        self.wan.add_route(RouteProxy(route.name, route.client_site, route.server_site))
        return self.route_addresses[(client, server)]

    def rows(self) -> list[dict[str, object]]:
        """One row per server: site, role, name, host:port, pid (the `testbed up` table)."""
        return [
            {
                "site": spec.site,
                "role": spec.describe_role(),
                "name": spec.name,
                "address": self.server(spec.name).address,
                "pid": self.server(spec.name).pid,
                "dsn": self.server(spec.name).conninfo(),
                "passfile": str(self.server(spec.name).passfile or ""),
            }
            for spec in self.topology.servers
            if spec.name in self.backend.servers
        ]

    def wan_rows(self) -> list[dict[str, str]]:
        """One row per cross-site route: who dials whom, and the proxy in between."""
        return [
            {
                "route": route.name,
                "from": route.client_site,
                "to": route.server_site,
                "purpose": route.purpose,
                "proxy": (self.route_addresses or {}).get((route.client, route.server), "-"),
                "upstream": self.backend.upstream(route.server),
            }
            for route in self.topology.cross_site_routes()
        ]


Progress = Callable[[str], None]


def attach(topology: Topology, backend: Backend, state: dict | None = None) -> Deployment:
    """The deployment of a run another command brought up, rebuilt from its servers, the
    proxies its WAN proxy holds, and the state operator procedures left (`dr_state`)."""
    state = state or {}
    if state.get("topology"):
        topology = topology_from_dict(state["topology"])
    deployment = Deployment(topology, backend)
    routes = topology.cross_site_routes()
    if routes:
        client = backend.start_proxy()
        proxies = client.proxies()
        site_of = topology.site_of()
        addresses, wired = {}, []
        for name, proxy in proxies.items():
            client_name, _, server_name = name.partition("-to-")
            if client_name in site_of and server_name in site_of:
                addresses[(client_name, server_name)] = backend.published(proxy.listen)
                wired.append(RouteProxy(name, site_of[client_name], site_of[server_name]))
        deployment.wan, deployment.route_addresses = Wan(client, wired), addresses
    if "standby_of" in state:
        deployment.standby_of = dict(state["standby_of"])
    deployment.promoted_from = dict(state.get("promoted_from", {}))
    deployment.failed_sites = set(state.get("failed_sites", []))
    deployment.replaced_by = dict(state.get("replaced_by", {}))
    deployment.superseded = dict(state.get("superseded", {}))
    deployment.incarnation = dict(state.get("incarnation", {}))
    return deployment


def dr_state(deployment: Deployment) -> dict:
    """What `attach` needs to pick up where operator procedures left the deployment."""
    return {
        "topology": topology_to_dict(deployment.topology),
        "standby_of": deployment.standby_of,
        "promoted_from": deployment.promoted_from,
        "failed_sites": sorted(deployment.failed_sites),
        "replaced_by": deployment.replaced_by,
        "superseded": deployment.superseded,
        "incarnation": deployment.incarnation,
    }


def bring_up(topology: Topology, backend: Backend, progress: Progress | None = None) -> Deployment:
    """Start every server of `topology` on `backend`, the WAN between its sites, and the
    standbys, which stream from their primary through the WAN."""
    say = progress or (lambda _message: None)
    attach_topology = getattr(backend, "attach_topology", None)
    if attach_topology is not None:  # a long-lived environment: its servers exist already
        return attach_topology(topology)
    backend.preflight(topology)  # refuse before starting anything, not halfway through
    primaries, standbys = topology.start_order()

    def start_primary(spec: ServerSpec) -> None:
        server = backend.new_server(spec.name, spec.site, spec.role, spec.port).init().start()
        for database in spec.databases:
            server.create_database(database)
        say(f"{spec.name} ({spec.describe_role()}) ready on {server.address}")

    # Where every server starts as a copy of one template (the local backend), a standby of
    # a primary started here is a copy made before the primary first ran: the same cluster
    # at the same checkpoint, which needs no base backup, and is copied while the primaries
    # start. It streams everything the primary writes from then on.
    cloned = bool(getattr(backend, "clones_one_template", False))
    fresh = {spec.name for spec in primaries}
    clones = {
        spec.name: backend.new_server(spec.name, spec.site, spec.role, spec.port)
        for spec in standbys
        if cloned and spec.standby_of in fresh
    }

    routes = topology.cross_site_routes()
    jobs: list[Callable[[], object]] = [
        functools.partial(start_primary, spec) for spec in primaries
    ]
    jobs += [clone.init for clone in clones.values()]
    if routes:
        jobs.append(backend.start_proxy)  # a process of its own: starts while servers do
    in_parallel(jobs)
    deployment = Deployment(topology, backend)
    if routes:
        deployment.wan, deployment.route_addresses = _wire_wan(routes, backend)
        say(f"WAN: {len(routes)} cross-site routes through proxies")

    def start_standby(spec: ServerSpec) -> None:
        assert spec.standby_of is not None  # only standbys come here
        primary = backend.servers[spec.standby_of]
        via = deployment.address_for(spec.name, primary.name)
        if spec.name in clones:
            standby = clones[spec.name].follow(primary, via=via)
        else:
            backup = f"{INITIAL_BACKUP}-for-{spec.name}"
            primary.backup(backup, via=via)
            standby = backend.new_server(spec.name, spec.site, spec.role, spec.port)
            standby.init_from_backup(primary, backup, streaming=True, via=via)
        standby.start()
        if spec.name in clones:  # as a base backup would have: it holds what the primary did
            primary.wait_for_catchup(standby, timeout=60)
        say(f"{spec.name} ({spec.describe_role()}) streaming on {standby.address} via {via}")

    in_parallel([functools.partial(start_standby, spec) for spec in standbys])
    return deployment


def _wire_wan(
    routes: tuple[Route, ...], backend: Backend
) -> tuple[Wan, dict[tuple[str, str], str]]:
    client = backend.start_proxy()
    proxies = client.populate(
        [
            {
                "name": route.name,
                "listen": backend.route_listen(),
                "upstream": backend.upstream(route.server),
            }
            for route in routes
        ]
    )
    listen = {p.name: backend.published(p.listen) for p in proxies}
    addresses = {(r.client, r.server): listen[r.name] for r in routes}
    wan = Wan(client, [RouteProxy(r.name, r.client_site, r.server_site) for r in routes])
    return wan, addresses


def in_parallel(jobs: list[Callable[[], object]]) -> None:
    """Run every job at once (starting or stopping is mostly waiting); all finish (or fail)
    before the first error is raised, so the backend knows about every server started
    before it cleans up, and no stop is left undone."""
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = [pool.submit(job) for job in jobs]
    for future in futures:
        future.result()
