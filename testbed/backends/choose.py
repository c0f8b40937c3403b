"""Which backend runs the servers: `local` (processes on this machine, the default) or
`docker` (containers, one network per site). Both give the same topology and outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testbed.errors import TestbedError

BACKENDS = ("local", "docker")


def open_backend(
    name: str,
    home: str | Path | None = None,
    keep: bool = False,
    owner: str = "library",
    storage: str | None = None,
    toxiproxy_image: str | None = None,
) -> Any:
    if name == "local":
        if toxiproxy_image:
            raise TestbedError("--toxiproxy-image needs --backend docker")
        from testbed.backends.local import LocalBackend

        return LocalBackend(home=home, keep=keep, owner=owner, storage=storage)
    if name == "docker":
        from testbed.backends.docker import DockerBackend

        return DockerBackend(home=home, keep=keep, owner=owner, toxiproxy_image=toxiproxy_image)
    raise TestbedError(f"unknown backend '{name}' (backends: {', '.join(BACKENDS)})")
