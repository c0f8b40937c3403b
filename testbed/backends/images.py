"""The docker backend's images, built here from `containers/`, with or without a registry.

- online: the official `postgres:15` and `python:3.11-slim` images are the bases. Nothing is
  pulled by this module: they count as available when the engine already has them (pulled
  by the user where a registry is reachable).
- offline: a base made from Debian's packages (`containers/build-base.sh`: debootstrap +
  `docker import`), used for both images.

Images are tagged with a hash of what goes into them (Dockerfile, context files, the base
image's id), so a build is skipped when nothing changed.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
OFFLINE_BASE = "bc-testbed/base:bookworm"
ONLINE_BASES = {"postgres": "postgres:15", "proxy": "python:3.11-slim"}
LABEL = "bc-testbed.image"


@dataclass(frozen=True)
class ImageSpec:
    name: str  # postgres | proxy
    dockerfile: Path
    context: Path
    inputs: tuple[Path, ...]  # files whose content goes into the image


def specs() -> dict[str, ImageSpec]:
    netfault = sorted((REPO / "testbed" / "netfault").rglob("*.py"))
    return {
        "postgres": ImageSpec(
            "postgres",
            CONTAINERS / "postgres" / "Dockerfile",
            CONTAINERS / "postgres",
            (CONTAINERS / "postgres" / "entrypoint.sh",),
        ),
        "proxy": ImageSpec(
            "proxy",
            CONTAINERS / "proxy" / "Dockerfile",
            REPO,
            (REPO / "testbed" / "__init__.py", REPO / "testbed" / "errors.py", *netfault),
        ),
    }


def engine_client() -> Any:
    import docker

    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as exc:  # the SDK raises several kinds for "no engine"
        raise TestbedError(
            "no Docker engine answers (start dockerd, or set DOCKER_HOST): "
            + str(exc).strip().splitlines()[0][:200]
        ) from None


def _image_id(client: Any, ref: str) -> str | None:
    import docker

    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return None


def tag_for(spec: ImageSpec, base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in (spec.dockerfile, *spec.inputs):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return f"bc-testbed/{spec.name}:{digest.hexdigest()[:12]}"


def choose_mode(client: Any, mode: str) -> str:
    """`online` when the official bases are already in the engine, else `offline`."""
    if mode != "auto":
        return mode
    have = all(_image_id(client, ref) for ref in ONLINE_BASES.values())
    return "online" if have else "offline"


def build_base(client: Any, say: Any) -> float:
    """The offline base image; seconds it took (0 when it exists already)."""
    if _image_id(client, OFFLINE_BASE):
        return 0.0
    say(f"building the offline base {OFFLINE_BASE} with debootstrap (about a minute)")
    started = time.monotonic()
    result = subprocess.run(
        ["sh", str(CONTAINERS / "build-base.sh"), OFFLINE_BASE],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise TestbedError(f"building {OFFLINE_BASE} failed: {last[-1] if last else 'no output'}")
    return time.monotonic() - started


def build(mode: str = "auto", say: Any = None) -> dict[str, Any]:
    """Every image, built if its tag is missing. Returns the tags and timings."""
    say = say or (lambda _m: None)
    client = engine_client()
    mode = choose_mode(client, mode)
    say(f"building images {mode} ({'official bases' if mode == 'online' else OFFLINE_BASE})")
    base_s = build_base(client, say) if mode == "offline" else 0.0
    result: dict[str, Any] = {"mode": mode, "base_build_s": round(base_s, 2), "images": {}}
    for spec in specs().values():
        base = OFFLINE_BASE if mode == "offline" else ONLINE_BASES[spec.name]
        base_id = _image_id(client, base)
        if base_id is None:
            raise TestbedError(
                f"base image {base} is missing; run `testbed images build --offline`"
            )
        tag = tag_for(spec, base_id)
        started = time.monotonic()
        cached = _image_id(client, tag) is not None
        if not cached:
            try:
                client.images.build(
                    path=str(spec.context),
                    dockerfile=str(spec.dockerfile),
                    buildargs={"BASE": base},
                    tag=tag,
                    labels={LABEL: spec.name},
                    rm=True,
                    pull=False,
                )
            except Exception as exc:
                raise TestbedError(f"building {tag} failed: {str(exc)[:300]}") from None
        # A stable name too, for the Compose environment (compose/two-site.yml).
        client.images.get(tag).tag(f"bc-testbed/{spec.name}", "latest")
        result["images"][spec.name] = {
            "tag": tag,
            "cached": cached,
            "build_s": round(time.monotonic() - started, 2),
        }
        say(f"{tag}: {'up to date' if cached else 'built'}")
    return result


def current_tags() -> dict[str, str]:
    """The tags the backend runs: the newest built from the current sources."""
    client = engine_client()
    found = {}
    for name, spec in specs().items():
        for base in (OFFLINE_BASE, ONLINE_BASES[name]):
            base_id = _image_id(client, base)
            if base_id and _image_id(client, tag_for(spec, base_id)):
                found[name] = tag_for(spec, base_id)
                break
        else:
            raise TestbedError(
                f"no {name} image built from the current sources; run `testbed images build`"
            )
    return found
