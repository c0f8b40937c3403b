"""The compose backend: scenarios and `testbed` commands against the long-lived two-site
environment of `compose/two-site.yml` (`docker compose -f compose/two-site.yml up -d`).

Nothing is created: the servers are the environment's containers, found by their Compose
service name, at the fixed loopback ports the Compose file publishes; the WAN is its proxy
(API on 127.0.0.1:8474) with the routes of `compose/wan.json`. A run starts from a clean
slate (every ICON database and the Info Mart database dropped and made again on the
primaries, the standby following by replication, no toxic on the WAN) and leaves the
environment as it found it: stopped or paused containers are started again.

Operator procedures change roles for good (a promoted standby stays a primary), so
scenarios that use them need a disposable backend (local or docker).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import docker.errors

from testbed.backends import runs
from testbed.backends.composefile import PROXY_API, server_ports, wan_routes
from testbed.backends.docker import SECRET_PATH, DockerNode
from testbed.backends.images import engine_client
from testbed.credentials import read_password, write_passfile
from testbed.errors import ServerFailed, TestbedError
from testbed.netfault.client import ProxyUnavailable, ToxiproxyClient
from testbed.ports import LOOPBACK
from testbed.postgres import Server, split_address
from testbed.topology import INFOMART_DATABASE, Topology

LABEL = "bc-testbed.compose"  # on every service of compose/two-site.yml


class ComposeNode(DockerNode):
    """A server of the Compose environment: its container exists and keeps its role."""

    def __init__(self, backend: Any, name: str, site: str, role: str, port: int, container: Any):
        super().__init__(backend, name, site, role, port)
        self.container = container
        self._made_with = None

    def start(self, timeout: float = 60.0) -> None:
        if self.state() == "paused":
            self.container.unpause()
        elif self.state() == "stopped":
            self.container.start()
        self._wait_ready(timeout)

    def _restarting(self) -> bool:
        try:
            self.container.reload()
        except docker.errors.DockerException:  # gone: the caller reports the failure
            return False
        policy = (self.container.attrs.get("HostConfig") or {}).get("RestartPolicy") or {}
        if self.container.status == "restarting":
            return True
        if policy.get("Name") in ("on-failure", "always", "unless-stopped"):
            time.sleep(0.5)  # between two tries of its policy's back-off
            return True
        return False

    def wipe(self) -> None:
        raise TestbedError("the Compose environment's data is not wiped by the testbed")

    def init(self) -> None:
        return None


class ComposeBackend:
    name = "compose"

    def __init__(self, home: str | Path | None = None, owner: str = "library", **_: Any) -> None:
        self.client = engine_client()
        containers = self.client.containers.list(all=True, filters={"label": LABEL})
        projects = sorted({c.labels.get("com.docker.compose.project", "") for c in containers})
        if len(projects) > 1:
            raise TestbedError(
                f"several Compose environments run ({', '.join(projects)}): keep one"
                " (`docker compose -p NAME -f compose/two-site.yml down -v` for the others)"
            )
        self.containers = {c.labels.get("com.docker.compose.service"): c for c in containers}
        if "wan-proxy" not in self.containers:
            raise TestbedError(
                "no Compose environment runs: start it with "
                "`docker compose -f compose/two-site.yml up -d` (after `testbed images build`)"
            )
        home_path = runs.home_dir(home)
        home_path.mkdir(parents=True, exist_ok=True)
        self.run = runs.RunDir.create(home_path, self.name, owner)
        self.data_root = self.run.path
        try:
            self.passfile = write_passfile(self.data_root, self._password())
        except BaseException:
            self.run.remove()
            raise
        self.nodes: dict[str, ComposeNode] = {}
        self.servers: dict[str, Server] = {}
        self.attached = True
        self._host_ports: dict[int, int] = {}  # proxy listen port -> published host port

    @property
    def id(self) -> str:
        return self.run.id

    def _password(self) -> str:
        """The environment's password, from the file its servers' secret is made of (the
        `pgpass` that `testbed compose` wrote beside the Compose file)."""
        for container in self.containers.values():
            for mount in container.attrs.get("Mounts") or []:
                if mount.get("Destination") == SECRET_PATH and mount.get("Source"):
                    try:
                        return read_password(Path(mount["Source"]))
                    except (OSError, IndexError) as exc:
                        raise TestbedError(
                            f"cannot read the Compose environment's password file"
                            f" {mount['Source']}: {exc}"
                        ) from None
        raise TestbedError(
            "the Compose environment's servers have no password secret: regenerate the files"
            " with `testbed compose` and recreate it (`docker compose ... up -d`)"
        )

    def attach_topology(self, topology: Topology) -> Any:
        """The environment as a Deployment of `topology`, reset to a clean slate."""
        from testbed.deployment import attach

        ports = server_ports(topology)
        for spec in topology.servers:
            container = self.containers.get(spec.name)
            if container is None:
                raise TestbedError(
                    f"the Compose environment has no service '{spec.name}'; regenerate it with"
                    " `testbed compose` for this topology"
                )
            node = ComposeNode(self, spec.name, spec.site, spec.role, ports[spec.name], container)
            node.primary = f"{spec.standby_of}" if spec.standby_of else None
            self.nodes[spec.name] = node
            self.servers[spec.name] = Server(node)  # type: ignore[arg-type]
            node.start()
        self._host_ports = {
            split_address(r["listen"])[1]: r["host_port"] for r in wan_routes(topology)
        }
        self.start_proxy().reset()  # every proxy enabled, no toxic
        deployment = attach(topology, self)  # the routes as the proxy holds them
        self._clean_slate(topology)
        return deployment

    def _clean_slate(self, topology: Topology) -> None:
        for spec in topology.servers:
            if spec.standby_of:
                continue
            server = self.servers[spec.name]
            for database in spec.databases:
                server.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
                server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                server.create_database(database)
        for spec in topology.servers:
            if spec.standby_of:
                primary = self.servers[spec.standby_of]
                primary.wait_for_catchup(self.servers[spec.name], timeout=60)
                if INFOMART_DATABASE in spec.databases and not self.servers[spec.name].scalar(
                    "SELECT count(*) FROM pg_database WHERE datname = %s", (INFOMART_DATABASE,)
                ):
                    raise ServerFailed(f"{spec.name} did not follow the reset of its primary")

    def start_proxy(self) -> ToxiproxyClient:
        client = ToxiproxyClient(f"http://{LOOPBACK}:{PROXY_API}")
        try:
            client.wait_until_ready(10.0)
        except ProxyUnavailable:
            raise TestbedError(f"the Compose WAN proxy does not answer on {client.url}") from None
        return client

    def new_server(self, name: str, *args: Any, **kwargs: Any) -> Server:
        raise TestbedError(
            f"cannot add server '{name}': the Compose environment's servers are fixed"
            " (use the local or docker backend)"
        )

    def preflight(self, topology: Topology) -> None:
        return None

    def route_listen(self) -> str:
        raise TestbedError("the Compose environment's WAN routes are fixed (compose/wan.json)")

    def upstream(self, server: str) -> str:
        return f"{server}:5432"

    def published(self, listen: str) -> str:
        """The host's address of a proxy listen address (compose/two-site.yml's ports)."""
        _, port = split_address(listen)
        return f"{LOOPBACK}:{self._host_ports[port]}"

    def inside(self, address: str) -> str:
        return address

    def record(self, node: Any) -> None:
        return None

    def ensure_volume(self, name: str) -> None:
        return None

    def network(self, site: str) -> Any:
        raise TestbedError("the Compose environment's networks are fixed")

    def leftovers(self) -> list[str]:
        return []

    def close(self) -> None:
        """Leave the environment as it was found: every container running, no toxic."""
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                if node.state() != "running":
                    node.start()
        with contextlib.suppress(Exception):
            self.start_proxy().reset()
        self.run.remove()

    def __enter__(self) -> ComposeBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
