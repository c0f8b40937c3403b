"""Which backend runs the servers: `local` (processes on this machine, the default),
`docker` (containers, one network per site; same topology, same outcomes), `compose`
(the long-lived environment of compose/two-site.yml, already running), or `swarm` (servers
and pipeline components as services placed by site, so sites can be separate hosts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testbed.errors import TestbedError

BACKENDS = ("local", "docker", "compose", "swarm")


def open_backend(
    name: str,
    home: str | Path | None = None,
    keep: bool = False,
    owner: str = "library",
    storage: str | None = None,
    toxiproxy_image: str | None = None,
    clock_dir: Path | None = None,
) -> Any:
    """The backend `name`. `clock_dir`: the virtual clock's folder, which a backend whose
    WAN proxy is a container mounts into it (the local one's processes reach it as is)."""
    if name == "local":
        if toxiproxy_image:
            raise TestbedError("--toxiproxy-image needs --backend docker")
        from testbed.backends.local import LocalBackend

        return LocalBackend(home=home, keep=keep, owner=owner, storage=storage)
    if name == "docker":
        from testbed.backends.docker import DockerBackend

        return DockerBackend(
            home=home,
            keep=keep,
            owner=owner,
            toxiproxy_image=toxiproxy_image,
            clock_dir=clock_dir,
        )
    if name == "swarm":
        from testbed.backends.swarm import SwarmBackend

        return SwarmBackend(home=home, keep=keep, owner=owner, toxiproxy_image=toxiproxy_image)
    if name == "compose":
        from testbed.backends.compose import ComposeBackend

        return ComposeBackend(home=home, owner=owner)
    raise TestbedError(f"unknown backend '{name}' (backends: {', '.join(BACKENDS)})")
