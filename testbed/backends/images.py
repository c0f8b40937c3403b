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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
OFFLINE_BASE = "bc-testbed/base:bookworm"
ONLINE_BASES = {
    "postgres": "postgres:15",
    "proxy": "python:3.11-slim",
    "pipeline": "python:3.11-slim",
}
LABEL = "bc-testbed.image"


@dataclass(frozen=True)
class ImageSpec:
    name: str  # postgres | proxy | pipeline
    dockerfile: Path
    # What goes into the build context: its path there -> a file or folder here. The context
    # is staged in a temporary folder, so nothing else (a .venv, run data) is ever sent.
    files: tuple[tuple[str, Path], ...]

    def inputs(self) -> list[tuple[str, Path]]:
        """Every file of the context, in a stable order (the tag hashes them). Not what a
        local install compiled into our own package (the proxy's C relay loop): it was
        built for this machine's Python, not the image's, and the image relays in Python.
        Installed packages copied in (psycopg's binary build) keep theirs."""
        found = []
        for target, source in self.files:
            ours = f"{target}/".startswith("testbed/")
            if source.is_dir():
                for path in sorted(source.rglob("*")):
                    built = ours and path.suffix in (".so", ".pyd")
                    if path.is_file() and "__pycache__" not in path.parts and not built:
                        found.append((f"{target}/{path.relative_to(source)}", path))
            else:
                found.append((target, source))
        return found


def _module_path(name: str) -> Path:
    """Where an installed module lives (a package's folder, or a module's file)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise TestbedError(f"the pipeline image needs the '{name}' module installed here")
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def _binary_psycopg() -> tuple[tuple[str, Path], ...]:
    """psycopg's binary build (and the libpq it bundles), if installed for Python 3.11."""
    import importlib.util
    import sys

    if sys.version_info[:2] != (3, 11) or importlib.util.find_spec("psycopg_binary") is None:
        return ()
    folder = _module_path("psycopg_binary")
    libs = folder.parent / "psycopg_binary.libs"
    found = (("site/psycopg_binary", folder),)
    return (*found, ("site/psycopg_binary.libs", libs)) if libs.is_dir() else found


def specs() -> dict[str, ImageSpec]:
    package = REPO / "testbed"
    return {
        "postgres": ImageSpec(
            "postgres",
            CONTAINERS / "postgres" / "Dockerfile",
            (
                ("entrypoint.sh", CONTAINERS / "postgres" / "entrypoint.sh"),
                ("supervise.py", package / "backends" / "supervise.py"),
            ),
        ),
        "proxy": ImageSpec(
            "proxy",
            CONTAINERS / "proxy" / "Dockerfile",
            (
                ("testbed/__init__.py", package / "__init__.py"),
                ("testbed/errors.py", package / "errors.py"),
                ("testbed/netfault", package / "netfault"),
                # The virtual clock's wire: on virtual time the proxy joins the run's clock.
                ("testbed/vclock/__init__.py", package / "vclock" / "__init__.py"),
                ("testbed/vclock/wire.py", package / "vclock" / "wire.py"),
            ),
        ),
        # Sources, ICONs, GIMs and the swarm node agent. psycopg goes in as the version
        # here, copied from this interpreter's packages (no index is needed to build it):
        # with its binary build when this is the image's Python (3.11), since GIM's
        # extraction of a backlog in pure Python takes cycles long enough to move a cut.
        "pipeline": ImageSpec(
            "pipeline",
            CONTAINERS / "pipeline" / "Dockerfile",
            (
                ("testbed", package),
                ("site/psycopg", _module_path("psycopg")),
                ("site/typing_extensions.py", _module_path("typing_extensions")),
                *_binary_psycopg(),
            ),
        ),
    }


def stage(spec: ImageSpec, folder: Path) -> Path:
    """The build context of `spec`, copied into `folder`."""
    import shutil

    for target, source in spec.inputs():
        destination = folder / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    shutil.copy2(spec.dockerfile, folder / "Dockerfile")
    return folder


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
    for target, path in [("Dockerfile", spec.dockerfile), *spec.inputs()]:
        digest.update(target.encode())
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
                with tempfile.TemporaryDirectory(prefix="bc-testbed-image-") as folder:
                    client.images.build(
                        path=str(stage(spec, Path(folder))),
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


def current_tags(names: tuple[str, ...] = ("postgres", "proxy")) -> dict[str, str]:
    """The tags a backend runs (the docker backend: postgres and proxy; swarm: also
    pipeline), each the newest built from the current sources."""
    client = engine_client()
    found = {}
    for name, spec in specs().items():
        if name not in names:
            continue
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
