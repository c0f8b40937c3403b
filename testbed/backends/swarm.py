"""The swarm backend: sites on separate hosts. Every server, the WAN proxy and every pipeline
component is a Docker Swarm service of one replica, placed by a node label per site
(`bc-testbed.site1 == true`); each site is its own overlay network, and the WAN proxy is the
only service on all of them, so an ICON's path to a remote IDB crosses the WAN inside the
cluster. State lives on named volumes on the task's node.

Faults act on the task's own process wherever it runs. A global service, the node agent
(testbed.backends.agent), has each node's engine socket; the testbed asks the agent of the
node a task runs on. Every task's PID 1 is a supervisor (testbed.backends.supervise), so a
kill, stop or restart acts on the process and the task survives it: a new swarm task takes
seconds to schedule, which would be hours of scenario time.

On one machine the testbed makes a one-node swarm on loopback (and leaves it at the end),
and gives that node every site's label. On many nodes the user labels them.

Ports are published in host mode on the task's node, because swarm cannot publish on one
address only: they listen on every interface of that node for the run's life. So every
server requires the run's password (SCRAM-SHA-256, handed to the tasks as a Docker secret),
and the WAN proxy's API the run's bearer token from any caller beyond the node's loopback.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from testbed.backends import runs, swarmfile
from testbed.backends.composefile import PASSWORD_SECRET
from testbed.backends.docker import (
    LABEL,
    PROXY_ALIAS,
    PROXY_API_PORT,
    ROUTE_PORTS,
    DockerBackend,
    _name,
    answers,
)
from testbed.backends.local import SHUTDOWN_SIGNALS
from testbed.backends.swarmtask import AgentClient, ComponentProcess, Task
from testbed.errors import PortInUse, ServerFailed, TestbedError
from testbed.netfault.client import ProxyUnavailable, ToxiproxyClient
from testbed.netfault.http import TOKEN_ENV
from testbed.ports import LOOPBACK, free_ports
from testbed.postgres import Server
from testbed.topology import Topology

SWARM_RECORD = "swarm.json"  # what this run changed in the swarm: made it, labelled nodes
READY_TIMEOUT_S = 120.0


class SwarmNode:
    """A server as a swarm service: its supervisor runs the image's entrypoint, which makes
    the data directory (initdb, or a clone of PRIMARY) on first start."""

    def __init__(
        self, backend: SwarmBackend, name: str, site: str, role: str, port: int | None
    ) -> None:
        self.backend = backend
        self.name, self.site, self.role = name, site, role
        self.host = LOOPBACK
        self.fixed_port = port is not None
        self.port = port if port is not None else free_ports(1)[0]
        self.service = _name(backend.id, name)
        self.volume = _name(backend.id, f"{name}-data")
        self.primary: str | None = None
        self.task = Task(backend, self.service, self.volume, "supervise")
        self.created = False
        self.logfile = backend.run.path / f"{name}.log"
        self.passfile: Path | None = backend.passfile

    @property
    def pid(self) -> int | None:
        if not self.created:
            return None
        with contextlib.suppress(TestbedError):
            return self.task.supervised().get("pid")
        return None

    @property
    def standby(self) -> bool:
        return self.primary is not None

    # --- data ----------------------------------------------------------------------------

    def init(self) -> None:
        """Nothing to copy: the entrypoint runs initdb on the first start."""

    def restore(self, backup: Path) -> None:
        """The standby clones itself (pg_basebackup from `primary`) on its first start."""

    def basebackup(self, name: str, host: str, port: int) -> Path:
        return Path(f"/clone/{self.name}/{name}")

    def rewind(self, host: str, port: int) -> None:
        raise ServerFailed(
            f"{self.name}: pg_rewind is not offered on the swarm backend; rebuild it with"
            " `transfer` (a base backup) instead"
        )

    def wipe(self) -> None:
        if self.created:
            if self.state() != "stopped":
                self.kill()
            self.task.clear()

    def configure(self, primary_conninfo: str | None = None) -> None:
        if primary_conninfo is None:
            self.primary = None
            return
        fields = dict(part.split("=", 1) for part in primary_conninfo.split() if "=" in part)
        self.primary = self.backend.inside(f"{fields['host']}:{fields['port']}")

    # --- process control -------------------------------------------------------------------

    def state(self) -> str:
        return self.task.state() if self.created else "stopped"

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        if self.state() != "stopped":
            raise ServerFailed(f"{self.name} is already {self.state()}")
        if not self.created:
            self._create()
            self.host = self.task.node_address or LOOPBACK
        # The role as it is now: the entrypoint reads PRIMARY when it clones.
        self.task.write("supervise/env.json", json.dumps({"PRIMARY": self.primary}).encode())
        self.task.start_child()
        self._wait_ready(timeout)
        self.backend.record(self)  # type: ignore[arg-type]

    def _create(self) -> None:
        for attempt in range(3):  # a port chosen free may be taken before the task binds it
            entry = swarmfile.server_service(
                self.name,
                self.site,
                self.port,
                autostart=False,
                image=self.backend.tags["postgres"],
            )
            self.backend.create_service(self.service, entry, {f"{self.name}-data": self.volume})
            try:
                self.task.wait_running()
                break
            except PortInUse:
                self.backend.remove_service(self.service)
                if self.fixed_port or attempt == 2:
                    raise
                self.port = free_ports(1)[0]
        self.created = True

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers(self.host, self.port, self.passfile):
                return
            report = self.task.supervised()
            if report["state"] == "stopped" and report.get("starts"):
                line = self.task.last_log_line()
                self.logfile.write_text(line)
                raise ServerFailed(f"{self.name} did not start: {line}")
            time.sleep(0.05)
        raise ServerFailed(
            f"{self.name} did not answer within {timeout:.0f}s: {self.task.last_log_line()}"
        )

    def stop(
        self, mode: str = "fast", timeout: float = 30.0, patience: float | None = None
    ) -> None:
        """As `LocalNode.stop`: after `patience` wall seconds, an immediate shutdown."""
        self.task.thaw()
        if self.state() == "running":
            self.task.signal(SHUTDOWN_SIGNALS[mode].name)
            escalate = patience is not None and mode != "immediate"
            if escalate and not self.task.wait_state("stopped", patience or 0.0):
                self.task.signal(SHUTDOWN_SIGNALS["immediate"].name)
            if not self.task.wait_state("stopped", timeout):
                self.task.signal("SIGUSR2")
                self.task.wait_state("stopped", 10.0)
        self.backend.record(self)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL of every server process at once, as a host crash would."""
        if self.state() == "stopped":
            raise ServerFailed(f"{self.name} is not running")
        if not self.task.kill_child():
            raise ServerFailed(f"{self.name} survived SIGKILL")
        self.backend.record(self)  # type: ignore[arg-type]

    def pause(self) -> None:
        if self.state() != "running":
            raise ServerFailed(f"{self.name} is {self.state()}, cannot pause")
        self.task.freeze(True)

    def resume(self) -> None:
        self.task.thaw()

    def restart(self, timeout: float = READY_TIMEOUT_S) -> None:
        if self.state() != "stopped":
            self.stop()
        self.start(timeout)


class SwarmBackend(DockerBackend):
    """One run as services on a swarm; a context manager that removes what it created."""

    name = "swarm"
    image_names = ("postgres", "proxy", "pipeline")

    def __init__(
        self,
        home: str | Path | None = None,
        keep: bool = False,
        owner: str = "library",
        toxiproxy_image: str | None = None,
        storage: str | None = None,
    ) -> None:
        if toxiproxy_image:
            raise TestbedError("--toxiproxy-image needs --backend docker")
        super().__init__(home=home, keep=keep, owner=owner)
        self.token = secrets.token_hex(16)
        self.proxy_token = secrets.token_urlsafe(24)  # the WAN proxy API's bearer token
        self.agent_port = free_ports(1)[0]
        self.agents: dict[str, AgentClient] = {}
        self.node_addresses: dict[str, str] = {}
        self.proxy_service: str | None = None
        self.components: list[ComponentProcess] = []
        self._swarm_lock = threading.Lock()
        self.changes: dict[str, Any] = {"made_swarm": False, "labels": []}
        self.labelled: set[str] = set()  # sites a node carries the label of
        self._password_secret: tuple[str, str] | None = None
        try:
            self._join_swarm()
            self._start_agents()
        except Exception:
            self.close()
            raise

    # --- the swarm ---------------------------------------------------------------------------

    def _join_swarm(self) -> None:
        import docker.errors

        info = self.client.info().get("Swarm", {})
        if info.get("LocalNodeState") != "active":
            try:
                self.client.swarm.init(advertise_addr=LOOPBACK, listen_addr=f"{LOOPBACK}:2377")
            except docker.errors.APIError as exc:
                raise TestbedError(f"could not make a one-node swarm: {exc.explanation}") from None
            self.changes["made_swarm"] = True
        elif not info.get("ControlAvailable"):
            raise TestbedError("this engine is a swarm worker: run the testbed on a manager node")
        self._save_changes()

    def _save_changes(self) -> None:
        (self.run.path / SWARM_RECORD).write_text(json.dumps(self.changes))

    def _nodes(self) -> list[Any]:
        return [n for n in self.client.nodes.list() if n.attrs["Status"]["State"] == "ready"]

    def label_sites(self, sites: list[str]) -> None:
        """On one node, that node gets every site's label; on many, each site needs a node the
        user labelled."""
        reason = self.refusal(sites)
        if reason:
            raise TestbedError(reason)
        nodes = self._nodes()
        if len(nodes) == 1:
            node = nodes[0]
            spec = node.attrs["Spec"]
            labels = dict(spec.get("Labels") or {})
            added = [
                swarmfile.SITE_LABEL.format(site=s)
                for s in sites
                if swarmfile.SITE_LABEL.format(site=s) not in labels
            ]
            if added:
                labels.update({key: "true" for key in added})
                node.update({**spec, "Labels": labels})
                self.changes["labels"] = sorted({*self.changes["labels"], *added})
                self._save_changes()
            self.labelled.update(sites)
            return
        self.labelled.update(sites)

    def refusal(self, sites: list[str], added: tuple[str, ...] = ()) -> str | None:
        """Why these sites cannot run here (None if they can): on many nodes, a site no node
        is labelled for; anywhere, a site added during the run (`add-site`, the new site of a
        return to normal). Its network would come after the WAN proxy's task started, and
        swarm attaches a task to a network only by replacing the task, every route's toxics
        and connections with it."""
        if added:
            return (
                f"add-site brings up {', '.join(added)} during the run, and the WAN proxy's"
                " swarm task cannot join a new site network without being replaced: run it"
                " with --backend local or docker"
            )
        nodes = self._nodes()
        if len(nodes) == 1:
            return None
        for site in sites:
            key = swarmfile.SITE_LABEL.format(site=site)
            if not any((n.attrs["Spec"].get("Labels") or {}).get(key) == "true" for n in nodes):
                return (
                    f"no swarm node is labelled for {site}: "
                    f"docker node update --label-add {key}=true NODE"
                )
        return None

    def node_of(self, node_id: str) -> tuple[str, AgentClient]:
        """The address the host reaches a node's published ports at, and that node's agent."""
        with self._swarm_lock:
            if node_id not in self.agents:
                nodes = self._nodes()
                if len(nodes) == 1:
                    address = LOOPBACK
                else:
                    address = self.client.nodes.get(node_id).attrs["Status"]["Addr"]
                self.node_addresses[node_id] = address
                self.agents[node_id] = AgentClient(
                    f"http://{address}:{self.agent_port}", self.token
                )
            return self.node_addresses[node_id], self.agents[node_id]

    def remove_service(self, name: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.APIError):
            self.client.services.get(name).remove()

    def tasks(self, service: str) -> list[dict[str, Any]]:
        import docker.errors

        try:
            found = self.client.services.get(service).tasks()
        except docker.errors.NotFound:
            return []
        return sorted(found, key=lambda t: t.get("CreatedAt", ""), reverse=True)

    def create_service(
        self, name: str, entry: dict[str, Any], volumes: dict[str, str] | None = None
    ) -> None:
        """A service of the run from a stack entry (testbed.backends.swarmfile); its site
        labelled first if it is new (an added site)."""
        sites = [site for site in entry.get("networks", {}) if site != "host"]
        if sites and sites[0] not in self.labelled:
            with self._swarm_lock:
                self.label_sites(sites[:1])
        networks = {
            site: self.network(site).name for site in entry.get("networks", {}) if site != "host"
        }
        labels = {LABEL: self.id, "com.docker.stack.namespace": _name(self.id, "stack")}
        kwargs = swarmfile.service_kwargs(
            name, entry, networks, volumes or {}, labels, {PASSWORD_SECRET: self._secret()}
        )
        try:
            self.client.services.create(**kwargs)
        except Exception as exc:
            raise TestbedError(f"swarm refused the service {name}: {exc}") from None

    def _secret(self) -> tuple[str, str]:
        """The run's password file as a Docker secret (made on first use): its id and name.
        Only the tasks it is given to see it, and only as a file."""
        with self._swarm_lock:
            if self._password_secret is None:
                name = _name(self.id, PASSWORD_SECRET)
                made = self.client.secrets.create(
                    name=name, data=self.passfile.read_bytes(), labels={LABEL: self.id}
                )
                self._password_secret = (made.id, name)
            return self._password_secret

    # --- Docker objects --------------------------------------------------------------------

    def _network(self, site: str) -> Any:
        if site not in self.networks:
            self.networks[site] = self.client.networks.create(
                _name(self.id, site),
                driver="overlay",
                attachable=True,
                labels={LABEL: self.id},
            )
        return self.networks[site]

    def _start_agents(self) -> None:
        bind = LOOPBACK if len(self._nodes()) == 1 else "0.0.0.0"
        entry = swarmfile.agent_service(
            self.token, self.agent_port, bind, image=self.tags["pipeline"]
        )
        self.create_service(_name(self.id, "agent"), entry)
        deadline = time.monotonic() + READY_TIMEOUT_S
        agent = Task(self, _name(self.id, "agent"), "", "")
        agent.wait_running()
        assert agent.agent is not None
        while not agent.agent.ping():
            if time.monotonic() > deadline:
                raise TestbedError("the swarm node agent did not answer")
            time.sleep(0.05)

    # --- the Backend protocol ----------------------------------------------------------------

    def new_server(
        self, name: str, site: str = "site1", role: str = "idb", port: int | None = None
    ) -> Server:
        if name in self.nodes:
            raise TestbedError(f"server '{name}' exists already in run {self.id}")
        node = SwarmNode(self, name, site, role, port)
        self.nodes[name] = node  # type: ignore[assignment]
        server = Server(node)  # type: ignore[arg-type]
        self.servers[name] = server
        return server

    def preflight(self, topology: Topology) -> None:
        super().preflight(topology)
        self.label_sites(list(topology.sites))

    def start_proxy(self) -> ToxiproxyClient:
        """The WAN proxy service on every site network; API and routes published on its
        node."""

        if self.proxy_client is not None:
            return self.proxy_client
        sites = list(self.networks)
        if not sites:
            raise TestbedError("the WAN proxy needs a site network: call preflight first")
        self.proxy_service = _name(self.id, PROXY_ALIAS)
        for attempt in range(3):  # a port chosen free may be taken before the task binds it
            api_port, *route_ports = free_ports(1 + len(ROUTE_PORTS))
            self.route_ports = dict(zip(ROUTE_PORTS, route_ports, strict=True))
            ports = {api_port: PROXY_API_PORT}
            ports.update({host: inner for inner, host in self.route_ports.items()})
            entry = swarmfile.proxy_service(sites, ports, image=self.tags["proxy"])
            # Published on the node's every address: callers beyond loopback need the token.
            entry["environment"] = {TOKEN_ENV: self.proxy_token}
            self.create_service(self.proxy_service, entry)
            task = Task(self, self.proxy_service, "", "")
            try:
                task.wait_running()
                break
            except PortInUse:
                self.remove_service(self.proxy_service)
                if attempt == 2:
                    raise
        client = ToxiproxyClient(f"http://{task.node_address}:{api_port}", token=self.proxy_token)
        try:
            client.wait_until_ready(30.0)
        except ProxyUnavailable:
            raise TestbedError("the WAN proxy service did not answer") from None
        self.run.record_process(runs.ProcessRecord(PROXY_ALIAS, 0, "service", client.url))
        self.proxy_client = client
        return client

    def published(self, listen: str) -> str:
        host = (
            self.proxy_client.url.split("//")[1].rsplit(":", 1)[0]
            if self.proxy_client
            else LOOPBACK
        )
        return super().published(listen).replace(LOOPBACK, host, 1)

    # --- pipeline components -----------------------------------------------------------------

    def component(
        self,
        name: str,
        module: str,
        site: str,
        config: dict[str, Any],
        env: dict[str, str],
        workdir: Path,
    ) -> ComponentProcess:
        """A pipeline component's service, created now (its supervisor idle until started)."""
        service = _name(self.id, name)
        volume = _name(self.id, f"{name}-state")
        entry = swarmfile.component_service(name, module, site, env, self.tags["pipeline"])
        self.create_service(service, entry, {f"{name}-state": volume})
        process = ComponentProcess(
            name, module, config, workdir, Task(self, service, volume, "supervise")
        )
        self.components.append(process)
        return process

    def component_path(self, name: str, filename: str) -> str:
        return f"{swarmfile.COMPONENT_DIR}/{filename}"

    def wait_components(self) -> None:
        """Until every component's task runs (they are scheduled in parallel)."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda p: p.task.wait_running(), self.components))

    def placements(self) -> dict[str, str]:
        """Where each task of the run runs: service (without the run's prefix) -> node's
        hostname. The report's proof that a site landed on its own host."""
        hostnames = {n.id: n.attrs["Description"]["Hostname"] for n in self.client.nodes.list()}
        prefix = _name(self.id, "")
        found = {}
        for service in self.client.services.list(filters={"label": f"{LABEL}={self.id}"}):
            for task in service.tasks({"desired-state": "running"}):
                if task.get("NodeID") and service.attrs["Spec"].get("Mode", {}).get("Replicated"):
                    found[service.name.removeprefix(prefix)] = hostnames.get(task["NodeID"], "?")
        return dict(sorted(found.items()))

    # --- clean-up ------------------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Services of the run still there; none once the run left a swarm it made (the
        engine then answers no service query at all)."""
        import docker.errors

        try:
            found = self.client.services.list(filters={"label": f"{LABEL}={self.id}"})
        except docker.errors.APIError:
            if self.client.info().get("Swarm", {}).get("LocalNodeState") == "active":
                raise
            return []
        return [service.name for service in found]

    def close(self) -> None:
        if self.keep:
            self.run.update(detached=False)
            return
        remove_swarm_run(self.client, self.id, self.changes)
        self.run.remove()


def remove_swarm_run(
    client: Any, run_id: str | None, changes: dict[str, Any] | None = None
) -> list[str]:
    """Remove the services, networks and volumes of one run (every run: None); then the node
    labels it added and the swarm if it made it, once no other run uses them."""
    import docker.errors

    label = LABEL if run_id is None else f"{LABEL}={run_id}"
    removed = []
    with contextlib.suppress(docker.errors.APIError):
        for service in client.services.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.APIError):
                service.remove()
                removed.append(service.name)
    # Tasks stop asynchronously: their containers hold the volumes and networks until then.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and client.containers.list(
        all=True, filters={"label": label}
    ):
        for container in client.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        time.sleep(0.1)
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
    for volume in client.volumes.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)
    with contextlib.suppress(docker.errors.APIError):
        for secret in client.secrets.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.APIError):
                secret.remove()
    _undo_changes(client, changes or {})
    return removed


def _undo_changes(client: Any, changes: dict[str, Any]) -> None:
    import docker.errors

    try:
        if client.services.list(filters={"label": LABEL}):
            return  # another run still uses the swarm and its labels
        if changes.get("labels"):
            for node in client.nodes.list():
                spec = node.attrs["Spec"]
                labels = {
                    k: v
                    for k, v in (spec.get("Labels") or {}).items()
                    if k not in changes["labels"]
                }
                if labels != (spec.get("Labels") or {}):
                    node.reload()
                    node.update({**node.attrs["Spec"], "Labels": labels})
        if changes.get("made_swarm"):
            client.swarm.leave(force=True)
    except docker.errors.APIError:
        pass
