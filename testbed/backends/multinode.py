"""A swarm of several nodes on one machine: each node a container running its own Docker
engine (docker-in-docker), on a network of its own. It proves that the swarm backend puts
each site on its own host, without the hosts: a site's servers and components land on the
node labelled for it, and the WAN between them crosses the nodes' network.

The nodes run with SYS_ADMIN and NET_ADMIN rather than --privileged (refused on some
machines), unconfined seccomp and AppArmor, the host's cgroup tree, and a volume for
/var/lib/docker (so the inner engine can use overlay2). Images go in with `docker save |
docker load`, no registry needed. The testbed then drives the swarm through the manager's
engine API (`DOCKER_HOST=tcp://NODE:2375` on the nodes' network, which this machine made).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testbed.backends import images, swarmfile
from testbed.errors import TestbedError

LABEL = "bc-testbed.multinode"
NODE_DOCKERFILE = images.CONTAINERS / "node" / "Dockerfile"
ENGINE_PORT = 2375
READY_TIMEOUT_S = 120.0


def node_image(client: Any, say: Any = None) -> str:
    """The node image (Debian's Docker engine on the offline base), built if missing."""
    say = say or (lambda _m: None)
    base_id = images._image_id(client, images.OFFLINE_BASE)
    if base_id is None:
        raise TestbedError("no offline base image: run `testbed images build --offline` first")
    spec = images.ImageSpec("node", NODE_DOCKERFILE, ())
    tag = images.tag_for(spec, base_id)
    if images._image_id(client, tag) is None:
        say(f"building {tag} (Debian's docker.io on the offline base)")
        with tempfile.TemporaryDirectory(prefix="bc-testbed-image-") as folder:
            try:
                client.images.build(
                    path=str(images.stage(spec, Path(folder))),
                    buildargs={"BASE": images.OFFLINE_BASE},
                    tag=tag,
                    labels={images.LABEL: "node"},
                    rm=True,
                    pull=False,
                )
            except Exception as exc:
                raise TestbedError(f"building {tag} failed: {str(exc)[:300]}") from None
    return tag


class Cluster:
    """Nodes `node1`, `node2`, ... (node1 the manager); node i carries site i's label."""

    def __init__(self, client: Any, sites: list[str], name: str = "bc-testbed-mn") -> None:
        self.client = client
        self.sites = sites
        self.name = name
        self.network: Any = None
        self.nodes: list[Any] = []  # containers
        self.addresses: list[str] = []

    @property
    def manager_url(self) -> str:
        return f"tcp://{self.addresses[0]}:{ENGINE_PORT}"

    def up(self, say: Any = None) -> Cluster:
        say = say or (lambda _m: None)
        image = node_image(self.client, say)
        self.network = self.client.networks.create(
            self.name, driver="bridge", labels={LABEL: self.name}
        )
        for index, _site in enumerate(self.sites, start=1):
            node_name = f"{self.name}-node{index}"
            volume = self.client.volumes.create(f"{node_name}-docker", labels={LABEL: self.name})
            self.nodes.append(
                self.client.containers.run(
                    image,
                    name=node_name,
                    hostname=f"node{index}",
                    detach=True,
                    network=self.name,
                    cap_add=["SYS_ADMIN", "NET_ADMIN"],
                    security_opt=["seccomp=unconfined", "apparmor=unconfined"],
                    cgroupns="host",
                    volumes={
                        "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                        volume.name: {"bind": "/var/lib/docker", "mode": "rw"},
                    },
                    labels={LABEL: self.name},
                )
            )
        for node in self.nodes:
            node.reload()
            self.addresses.append(node.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"])
        engines = [self._engine(address) for address in self.addresses]
        say(f"{len(engines)} node engines answer at {', '.join(self.addresses)}")
        manager = engines[0]
        manager.swarm.init(advertise_addr=self.addresses[0], listen_addr="0.0.0.0:2377")
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for engine, address in zip(engines[1:], self.addresses[1:], strict=True):
            engine.swarm.join(
                remote_addrs=[f"{self.addresses[0]}:2377"],
                join_token=token,
                advertise_addr=address,
                listen_addr="0.0.0.0:2377",
            )
        self._load_images(say)
        for node in manager.nodes.list():
            hostname = node.attrs["Description"]["Hostname"]
            index = int(hostname.removeprefix("node"))
            site = self.sites[index - 1]
            spec = node.attrs["Spec"]
            labels = {**(spec.get("Labels") or {}), swarmfile.SITE_LABEL.format(site=site): "true"}
            node.update({**spec, "Labels": labels})
        say("swarm ready: " + ", ".join(f"node{i + 1}={s}" for i, s in enumerate(self.sites)))
        return self

    def _engine(self, address: str) -> Any:
        import docker

        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                engine = docker.DockerClient(base_url=f"tcp://{address}:{ENGINE_PORT}", timeout=30)
                engine.ping()
                return engine
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise TestbedError(
                        f"the node engine at {address} did not answer: {exc}"
                    ) from None
                time.sleep(0.25)

    def _load_images(self, say: Any) -> None:
        """Every image the swarm backend runs, and the base they are tagged from."""
        tags = [*images.current_tags(("postgres", "proxy", "pipeline")).values()]
        tags.append(images.OFFLINE_BASE)
        started = time.monotonic()
        for address in self.addresses:
            save = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE)
            load = subprocess.run(
                ["docker", "-H", f"tcp://{address}:{ENGINE_PORT}", "load", "-q"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
            save.wait()
            if save.returncode or load.returncode:
                raise TestbedError(f"loading the images into {address} failed: {load.stderr}")
        say(f"images loaded into {len(self.addresses)} nodes in {time.monotonic() - started:.1f}s")

    def down(self) -> None:
        remove(self.client, self.name)

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """DOCKER_HOST pointing at the manager while inside."""
        before = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = self.manager_url
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = before


def remove(client: Any, name: str | None = None) -> None:
    """The node containers, their volumes and network (of one cluster, or of all)."""
    label = LABEL if name is None else f"{LABEL}={name}"
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)
    for volume in client.volumes.list(filters={"label": label}):
        with contextlib.suppress(Exception):
            volume.remove(force=True)
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(Exception):
            network.remove()
