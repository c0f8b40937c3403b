"""Where a run's server data directories live: in RAM (tmpfs) when there is room, else on disk.

A PostgreSQL data directory is about a thousand files, and creating files is what costs on
a virtual disk: copying the template takes ~0.7 s there and ~0.07 s on tmpfs. Crash
scenarios lose nothing by it: they kill processes, and a killed process's writes are in
the page cache (or tmpfs) alike; only a power cut would tell the two apart, and the testbed
never simulates one. `TESTBED_STORAGE=disk` (or `--storage disk`) keeps data on disk.

Either way the run folder holds the manifest, and a `data` link to the data when it is
elsewhere, so a person finds everything of a run from its folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from testbed.backends.osuser import ServerUser
from testbed.errors import TestbedError

Storage = Literal["auto", "ram", "disk"]
STORAGES: tuple[Storage, ...] = ("auto", "ram", "disk")

RAM_ROOT = Path("/dev/shm/bc-testbed")
DISK_FALLBACK_ROOT = Path("/var/tmp/bc-testbed")
RAM_MIN_FREE_BYTES = 1 << 30  # leave RAM alone when it is tight (a container's 64 MB /dev/shm)


def storage_choice(explicit: str | None = None) -> Storage:
    choice = explicit or os.environ.get("TESTBED_STORAGE") or "auto"
    if choice not in STORAGES:
        raise TestbedError(f"storage '{choice}' is not one of: {', '.join(STORAGES)}")
    return choice


def ram_available() -> bool:
    try:
        return shutil.disk_usage(RAM_ROOT.parent).free >= RAM_MIN_FREE_BYTES
    except OSError:
        return False


def data_root_for(run_dir: Path, user: ServerUser, storage: Storage) -> Path:
    """The folder for this run's server data (created, owned by the server account)."""
    if storage == "ram" and not ram_available():
        raise TestbedError(
            f"storage 'ram' asked for, but {RAM_ROOT.parent} is missing or has under 1 GiB free; "
            "use --storage disk"
        )
    if storage in ("auto", "ram") and ram_available():
        base = _shared(RAM_ROOT)
    elif user.can_reach(run_dir):
        return _own(run_dir, user)
    else:
        base = _shared(DISK_FALLBACK_ROOT)  # root under /root, which the account cannot enter
    base.mkdir(parents=True, exist_ok=True)
    if base.stat().st_uid == os.getuid():
        base.chmod(0o755)
    root = base / run_dir.name
    root.mkdir(mode=0o700)
    (run_dir / "data").symlink_to(root)
    return _own(root, user)


def _shared(base: Path) -> Path:
    """`base` for root, which every machine's runs share; `base-<uid>` for anyone else, so
    that a user's runs never need a folder another account made (and owns)."""
    uid = os.getuid()
    return base if uid == 0 else base.with_name(f"{base.name}-{uid}")


def _own(path: Path, user: ServerUser) -> Path:
    user.own(path)
    if not user.can_reach(path):
        raise TestbedError(
            f"the server account '{user.name}' cannot reach {path}; "
            "use --home (or TESTBED_HOME) with a directory it can traverse"
        )
    return path
