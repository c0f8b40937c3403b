"""The docker backend: every server a container, every site its own Docker network, and the
WAN proxy a container on all of them, so the only path between sites is the proxy.

The pipeline's processes (data sources, ICONs, GIMs) stay on the host and reach servers on
ports published to 127.0.0.1 only; cross-site ones go through the proxy's published ports.
Containers reach each other by name inside their site's network: a standby clones its
primary with pg_basebackup and streams from it through the proxy container, as the local
backend's standby does through the proxy process.

testcontainers starts the containers. Its reaper (Ryuk) needs an image from a registry, so
it is turned off: everything the run creates carries the label `bc-testbed.run=<run id>`,
`close()` removes it, and `testbed down --all` removes what crashed runs left behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from testbed.backends import images, runs
from testbed.backends.local import SHUTDOWN_SIGNALS
from testbed.credentials import new_password, write_passfile
from testbed.errors import PortInUse, ServerFailed, TestbedError
from testbed.netfault.client import ProxyUnavailable, ToxiproxyClient
from testbed.ports import LOOPBACK, free_port, free_ports, port_is_free
from testbed.postgres import SUPERUSER, Server, split_address
from testbed.topology import Topology

LABEL = "bc-testbed.run"
PG_PORT = 5432
PROXY_ALIAS = "wan-proxy"
PROXY_API_PORT = 8474
ROUTE_PORTS = tuple(range(20000, 20032))  # the proxy's listen ports, published at start
READY_TIMEOUT_S = 120.0
SECRET_PATH = "/run/secrets/pgpass"  # where the image's entrypoint reads the run's password


def _configure_testcontainers() -> None:
    """No reaper (it needs a registry image); and these machines carry /.dockerenv, which
    makes testcontainers dial a gateway address: we only ever use loopback."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    os.environ.setdefault("TC_HOST", LOOPBACK)


def _name(run_id: str, what: str) -> str:
    return f"bc-testbed-{run_id}-{what}"


def answers(host: str, port: int, passfile: Path | None) -> bool:
    """The server at host:port takes a connection and a query (the readiness probe)."""
    try:
        with psycopg.connect(
            host=host,
            port=port,
            user=SUPERUSER,
            dbname="postgres",
            connect_timeout=2,
            passfile=str(passfile) if passfile else None,
        ) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _publish(container: Any, port: int, host_port: int) -> Any:
    """Publish a container port on 127.0.0.1 only (testcontainers would bind 0.0.0.0)."""
    container.ports[f"{port}/tcp"] = (LOOPBACK, host_port)
    return container


class DockerNode:
    """One server's container and its data volume; `Server` adds the SQL vocabulary."""

    def __init__(
        self, backend: DockerBackend, name: str, site: str, role: str, port: int | None
    ) -> None:
        self.backend = backend
        self.name, self.site, self.role = name, site, role
        self.host = LOOPBACK
        self.fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.volume = _name(backend.id, f"{name}-data")
        self.primary: str | None = None  # in-network host:port it streams from, if a standby
        self.container: Any = None
        self._made_with: str | None = None  # the PRIMARY its container was created with
        self._rewind = False  # its next container rewinds its data to `primary` first
        self.logfile = backend.run.path / f"{name}.log"
        self.passfile: Path | None = backend.passfile

    @property
    def pid(self) -> int | None:
        if self.container is None:
            return None
        with contextlib.suppress(Exception):
            self.container.reload()
            return self.container.attrs["State"]["Pid"] or None
        return None

    @property
    def standby(self) -> bool:
        return self.primary is not None

    # --- data ----------------------------------------------------------------------------

    def init(self) -> None:
        """Nothing to copy: the entrypoint runs initdb on the container's first start."""
        self.backend.ensure_volume(self.volume)

    def restore(self, backup: Path) -> None:
        """The standby clones itself (pg_basebackup from `primary`) on its first start."""
        self.backend.ensure_volume(self.volume)

    def basebackup(self, name: str, host: str, port: int) -> Path:
        """Recorded only: the receiving container takes the backup itself, inside the
        Docker networks, through the address it is configured with."""
        return Path(f"/clone/{self.name}/{name}")

    def rewind(self, host: str, port: int) -> None:
        """Done by the container itself on its next start (`REWIND`), from `primary`, inside
        the Docker networks; its data stays in the volume."""
        self._rewind = True
        self._remove_container()

    def wipe(self) -> None:
        self._remove_container()
        self.backend.remove_volume(self.volume)
        self.backend.ensure_volume(self.volume)

    def configure(self, primary_conninfo: str | None = None) -> None:
        """A standby of the server at that conninfo (translated to its in-network address),
        or a primary; applied when the container is next (re)created."""
        if primary_conninfo is None:
            self.primary = None
            return
        fields = dict(part.split("=", 1) for part in primary_conninfo.split() if "=" in part)
        self.primary = self.backend.inside(f"{fields['host']}:{fields['port']}")

    # --- process control -------------------------------------------------------------------

    def state(self) -> str:
        if self.container is None:
            return "stopped"
        try:
            self.container.reload()
        except Exception:
            return "stopped"
        status = self.container.status
        return {"running": "running", "paused": "paused"}.get(status, "stopped")

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        if self.state() != "stopped":
            raise ServerFailed(f"{self.name} is already {self.state()}")
        if self.container is not None and self._made_with != self.primary:
            self._remove_container()  # its role changed: a new container on the same volume
        if self.container is None:
            self._create()
        else:
            self.container.start()
        self._wait_ready(timeout)
        self.backend.record(self)

    def _create(self) -> None:
        for attempt in range(3):  # a port chosen free may be taken before docker binds it
            if not port_is_free(self.host, self.port):
                if self.fixed_port:
                    raise PortInUse(f"{self.name}: port {self.port} on {self.host} is in use")
                self.port = free_port()
            try:
                self.container = self._container().start().get_wrapped_container()
                self._made_with = self.primary
                return
            except Exception as exc:
                self._remove_container()
                with contextlib.suppress(Exception):
                    name = _name(self.backend.id, self.name)
                    self.backend.client.containers.get(name).remove(force=True)
                if "already allocated" not in str(exc) or self.fixed_port or attempt == 2:
                    raise ServerFailed(f"{self.name}: the container did not start: {exc}") from None
                self.port = free_port()

    def _container(self) -> Any:
        from testcontainers.core.container import DockerContainer

        env = {"NAME": self.name}
        if self.primary:
            env["PRIMARY"] = self.primary
        if self._rewind and self.primary:
            env["REWIND"] = "1"  # pg_rewind from PRIMARY before it starts as its standby
            self._rewind = False
        container = (
            DockerContainer(
                self.backend.tags["postgres"], env=env, name=_name(self.backend.id, self.name)
            )
            .with_network(self.backend.network(self.site))
            .with_network_aliases(self.name)
            .with_volume_mapping(self.volume, "/var/lib/testbed", "rw")  # a named volume
            .with_volume_mapping(str(self.passfile), SECRET_PATH, "ro")  # the run's password
            .with_kwargs(labels={LABEL: self.backend.id})
        )
        return _publish(container, PG_PORT, self.port)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state() == "stopped" and not self._restarting():
                raise ServerFailed(f"{self.name} did not start: {self._last_log_line()}")
            if answers(self.host, self.port, self.passfile):
                return
            time.sleep(0.05)
        raise ServerFailed(
            f"{self.name} did not answer within {timeout:.0f}s: {self._last_log_line()}"
        )

    def _restarting(self) -> bool:
        """A container whose restart policy brings it back (a Compose standby retries its
        clone until the WAN proxy routes it): not a failure yet."""
        return False

    def _last_log_line(self) -> str:
        try:
            lines = self.container.logs(tail=20).decode(errors="replace").strip().splitlines()
        except Exception:
            return "no log"
        self.logfile.write_text("\n".join(lines))
        return lines[-1] if lines else "no output"

    def stop(
        self, mode: str = "fast", timeout: float = 30.0, patience: float | None = None
    ) -> None:
        """As `LocalNode.stop`: after `patience` wall seconds, an immediate shutdown."""
        if self.state() == "paused":
            self.container.unpause()
        if self.state() == "running":
            # The image's stop signal is SIGINT: PostgreSQL's fast shutdown.
            self.container.kill(signal=SHUTDOWN_SIGNALS[mode].name)
            if patience is not None and mode != "immediate":
                ends = time.monotonic() + patience
                while self.state() == "running" and time.monotonic() < ends:
                    time.sleep(0.02)
                if self.state() == "running":
                    self.container.kill(signal=SHUTDOWN_SIGNALS["immediate"].name)
            self.container.wait(timeout=timeout)
        self.backend.record(self)

    def kill(self) -> None:
        """SIGKILL the container: the whole server at once, as a host crash would."""
        if self.state() == "stopped":
            raise ServerFailed(f"{self.name} is not running")
        if self.state() == "paused":
            self.container.unpause()
        self.container.kill()
        self.container.wait(timeout=10)
        self.backend.record(self)

    def pause(self) -> None:
        if self.state() != "running":
            raise ServerFailed(f"{self.name} is {self.state()}, cannot pause")
        self.container.pause()

    def resume(self) -> None:
        if self.state() == "paused":
            self.container.unpause()

    def restart(self, timeout: float = READY_TIMEOUT_S) -> None:
        if self.state() != "stopped":
            self.stop()
        self.start(timeout)

    def _remove_container(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.remove(force=True)
        self.container = None


class DockerBackend:
    """One run on the Docker engine; a context manager that removes what it created."""

    name = "docker"
    image_names: tuple[str, ...] = ("postgres", "proxy")

    def __init__(
        self,
        home: str | Path | None = None,
        keep: bool = False,
        owner: str = "library",
        toxiproxy_image: str | None = None,
        storage: str | None = None,  # accepted for symmetry: data lives in Docker volumes
        clock_dir: Path | None = None,
    ) -> None:
        _configure_testcontainers()
        self.client = images.engine_client()
        self.tags = images.current_tags(self.image_names)
        self.toxiproxy_image = toxiproxy_image
        # On the virtual clock: the folder of the clock's socket and `now` file, mounted
        # into the proxy container at the same path so the proxy can join the clock.
        self.clock_dir = clock_dir
        self.keep = keep
        home_path = runs.home_dir(home)
        home_path.mkdir(parents=True, exist_ok=True)
        self.run = runs.RunDir.create(home_path, self.name, owner)
        self.data_root = self.run.path
        self.passfile = write_passfile(self.data_root, new_password())
        self.nodes: dict[str, DockerNode] = {}
        self.servers: dict[str, Server] = {}
        self.networks: dict[str, Any] = {}
        self.proxy_container: Any = None
        self.proxy_client: ToxiproxyClient | None = None
        self.route_ports: dict[int, int] = {}  # proxy listen port -> host port
        self._free_routes = list(ROUTE_PORTS)
        self._lock = threading.Lock()
        self.attached = False

    @property
    def id(self) -> str:
        return self.run.id

    # --- Docker objects --------------------------------------------------------------------

    def network(self, site: str) -> Any:
        """The site's own network (made on first use); the proxy joins every one."""
        with self._lock:
            return self._network(site)

    def _network(self, site: str) -> Any:
        if site not in self.networks:
            from testcontainers.core.network import Network

            network = Network(docker_network_kw={"labels": {LABEL: self.id}})
            network.name = _name(self.id, site)
            self.networks[site] = network.create()
            if self.proxy_container is not None:
                network.connect(self.proxy_container.id, network_aliases=[PROXY_ALIAS])
        return self.networks[site]

    def ensure_volume(self, name: str) -> None:
        import docker

        try:
            self.client.volumes.get(name)
        except docker.errors.NotFound:
            self.client.volumes.create(name, labels={LABEL: self.id})

    def remove_volume(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.client.volumes.get(name).remove(force=True)

    # --- the Backend protocol ----------------------------------------------------------------

    def new_server(
        self, name: str, site: str = "site1", role: str = "idb", port: int | None = None
    ) -> Server:
        if name in self.nodes:
            raise TestbedError(f"server '{name}' exists already in run {self.id}")
        node = DockerNode(self, name, site, role, port)
        self.nodes[name] = node
        server = Server(node)  # type: ignore[arg-type]
        self.servers[name] = server
        return server

    def preflight(self, topology: Topology) -> None:
        for spec in topology.servers:
            if spec.port is not None and not port_is_free(LOOPBACK, spec.port):
                raise PortInUse(f"{spec.name}: port {spec.port} on {LOOPBACK} is in use")
        for site in topology.sites:
            self.network(site)

    def start_proxy(self) -> ToxiproxyClient:
        """The WAN proxy container on every site network; its API and listen ports are
        published to 127.0.0.1; the virtual clock's folder, if any, is bind-mounted at the
        same path (a Unix socket and a shared file work across the boundary on one host)."""
        if self.proxy_client is not None:
            return self.proxy_client
        from testcontainers.core.container import DockerContainer

        image = self.toxiproxy_image or self.tags["proxy"]
        sites = list(self.networks)
        if not sites:
            raise TestbedError("the WAN proxy needs a site network: call preflight first")
        for attempt in range(3):  # another program may take a chosen port meanwhile
            api_port, *route_ports = free_ports(1 + len(ROUTE_PORTS))
            self.route_ports = dict(zip(ROUTE_PORTS, route_ports, strict=True))
            container = (
                DockerContainer(image, name=_name(self.id, PROXY_ALIAS))
                .with_network(self.networks[sites[0]])
                .with_network_aliases(PROXY_ALIAS)
                .with_kwargs(labels={LABEL: self.id})
            )
            if self.clock_dir is not None:
                folder = str(Path(self.clock_dir).absolute())
                container = container.with_volume_mapping(folder, folder, "rw")
            _publish(container, PROXY_API_PORT, api_port)
            if self.toxiproxy_image:
                container = container.with_command("-host=0.0.0.0")
            for port, host_port in self.route_ports.items():
                _publish(container, port, host_port)
            try:
                self.proxy_container = container.start().get_wrapped_container()
                break
            except Exception as exc:
                with contextlib.suppress(Exception):
                    self.client.containers.get(_name(self.id, PROXY_ALIAS)).remove(force=True)
                if "already allocated" not in str(exc) or attempt == 2:
                    raise TestbedError(f"the WAN proxy container did not start: {exc}") from None
        for site in sites[1:]:
            self.networks[site].connect(self.proxy_container.id, network_aliases=[PROXY_ALIAS])
        client = ToxiproxyClient(f"http://{LOOPBACK}:{api_port}")
        try:
            client.wait_until_ready(30.0)
        except ProxyUnavailable:
            raise TestbedError(f"the WAN proxy container ({image}) did not answer") from None
        self.run.record_process(runs.ProcessRecord(PROXY_ALIAS, 0, "container", client.url))
        self.proxy_client = client
        return client

    # Where routes listen and what they dial: container ports and in-network names here.

    def route_listen(self) -> str:
        if not self._free_routes:
            raise TestbedError(f"more than {len(ROUTE_PORTS)} WAN routes: raise ROUTE_PORTS")
        return f"0.0.0.0:{self._free_routes.pop(0)}"

    def upstream(self, server: str) -> str:
        return f"{server}:{PG_PORT}"

    def published(self, listen: str) -> str:
        """The host's address of a proxy listen address."""
        _, port = split_address(listen)
        return f"{LOOPBACK}:{self.route_ports[port]}"

    def inside(self, address: str) -> str:
        """The in-network address of a host-side address (a server's or a proxy route's)."""
        _, port = split_address(address)
        for node in self.nodes.values():
            if node.port == port:
                return f"{node.name}:{PG_PORT}"
        for inner, outer in self.route_ports.items():
            if outer == port:
                return f"{PROXY_ALIAS}:{inner}"
        return address

    def record(self, node: DockerNode) -> None:
        self.run.record(
            runs.ServerRecord(node.name, node.site, node.role, node.host, node.port, node.volume)
        )

    def leftovers(self) -> list[str]:
        return [
            c.name
            for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.id}"})
        ]

    def close(self) -> None:
        if self.keep:
            self.run.update(detached=False)
            return
        remove_run(self.client, self.id)
        self.run.remove()

    def __enter__(self) -> DockerBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def remove_run(client: Any, run_id: str | None = None) -> list[str]:
    """Remove the containers, networks and volumes of one run (every run: None)."""
    label = LABEL if run_id is None else f"{LABEL}={run_id}"
    removed = []
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(container.name)
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(Exception):
            network.remove()
    for volume in client.volumes.list(filters={"label": label}):
        with contextlib.suppress(Exception):
            volume.remove(force=True)
    return removed
