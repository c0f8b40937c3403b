"""A cached, ready-to-copy PostgreSQL data directory per server version and configuration.

`initdb` takes a second or more; copying its result takes a fraction of that. The template
is made once per (version, configuration) under the cache directory and copied for every
server. Its name carries a hash of the configuration, so changing a setting here makes a new
template instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from testbed.backends.osuser import ServerUser
from testbed.backends.pgbin import PgBinaries
from testbed.credentials import new_password, set_password_sql
from testbed.errors import ServerFailed, TestbedError

SUPERUSER = "postgres"
SERVER_CONF = "testbed_server.conf"  # per-server settings (port, standby), written per copy

# Settings every server shares. Replication is on everywhere so that any server can be
# backed up or become a standby; fsync stays on because crash scenarios are the point.
POSTGRESQL_CONF = f"""
# --- bc-testbed ---
unix_socket_directories = ''
max_connections = 100
shared_buffers = 32MB
# Dynamic shared memory as files in the data directory, not in /dev/shm: a killed server
# (a lost site) leaves its segments behind, and there they go with its data, instead of
# holding 1 MB of RAM each until the machine reboots.
dynamic_shared_memory_type = mmap
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
wal_log_hints = on
hot_standby = on
fsync = on
synchronous_commit = on
logging_collector = off
log_line_prefix = '%m [%p] %q%a '
log_min_messages = warning
# A client cut off by a black-holed WAN leaves its transaction open for ever (the proxy
# keeps the server's side of the connection alive). An open transaction holds back the
# snapshot xmin that GIM extracts up to, for every database of the server: end it soon.
idle_in_transaction_session_timeout = 1s
# A standby cut off from its primary retries after this long. The default, 5 s, is five
# scenario hours at 1h = 1s: a replica that far behind at a disaster makes the surviving
# Info Mart forget what GIM decided (the compression trap).
wal_retrieve_retry_interval = 100ms
include_if_exists = '{SERVER_CONF}'
"""

PG_HBA_CONF = """# bc-testbed: loopback only, and the run's password (testbed/credentials.py)
host    all          all  127.0.0.1/32    scram-sha-256
host    all          all  ::1/128         scram-sha-256
host    replication  all  127.0.0.1/32    scram-sha-256
host    replication  all  ::1/128         scram-sha-256
"""

INITDB_ARGS = (
    "--username",
    SUPERUSER,
    "--auth",
    "scram-sha-256",
    "--encoding",
    "UTF8",
    "--locale",
    "C",
)


def cache_root() -> Path:
    """Where templates live: `TESTBED_CACHE_DIR`, else a cache the server account can read."""
    explicit = os.environ.get("TESTBED_CACHE_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/cache/bc-testbed")  # root's ~/.cache is out of the server's reach
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "bc-testbed"


def template_key(bins: PgBinaries) -> str:
    digest = hashlib.sha256(
        "\n".join([bins.version, POSTGRESQL_CONF, PG_HBA_CONF, *INITDB_ARGS]).encode()
    ).hexdigest()
    return f"pg{bins.version}-{digest[:12]}"


def ensure_template(bins: PgBinaries, user: ServerUser, root: Path | None = None) -> Path:
    """The template data directory, made now if it is not cached yet."""
    templates = (root or cache_root()) / "templates"
    path = templates / template_key(bins)
    if (path / "PG_VERSION").exists():
        return path
    try:
        templates.mkdir(parents=True, exist_ok=True)
        templates.chmod(0o755)
    except OSError as exc:
        raise TestbedError(f"cannot create the template cache {templates}: {exc}") from None
    if not user.can_reach(templates):
        raise TestbedError(
            f"the server account '{user.name}' cannot reach {templates}; "
            "set TESTBED_CACHE_DIR to a directory it can read"
        )
    scratch = templates / f".initdb-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(mode=0o700)
    # initdb wants a superuser password for scram-sha-256; the template's is thrown away
    # (every run sets its own, `personalise`).
    pwfile = scratch / "pwfile"
    pwfile.write_text(new_password() + "\n", encoding="utf-8")
    pwfile.chmod(0o600)
    user.own(scratch)
    try:
        result = subprocess.run(
            [
                bins.path("initdb"),
                "--pgdata",
                str(scratch / "data"),
                "--no-sync",
                "--pwfile",
                str(pwfile),
                *INITDB_ARGS,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=scratch,
            **user.popen_kwargs(),
        )
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()
            raise ServerFailed(f"initdb failed: {last[-1] if last else result.returncode}")
        data = scratch / "data"
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(POSTGRESQL_CONF)
        (data / "pg_hba.conf").write_text(PG_HBA_CONF, encoding="utf-8")
        user.own(data)
        try:
            data.rename(path)  # atomic: a concurrent runner either wins or loses cleanly
        except OSError:
            if not (path / "PG_VERSION").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def personalise(
    template: Path, dest: Path, bins: PgBinaries, user: ServerUser, password: str
) -> Path:
    """A copy of the cached template whose superuser has the run's password: every server
    of the run is copied from it, so copies made before a primary first starts are still
    the same cluster at the same checkpoint (a standby of it, `clones_one_template`). The
    password goes in through single-user mode, as a SCRAM verifier: no server listens yet."""
    for argv, stdin, what in (
        (["cp", "-a", str(template), str(dest)], None, f"copy into {dest}"),
        (
            [
                bins.path("postgres"),
                "--single",
                "-D",
                str(dest),
                *("-c", "log_min_messages=fatal", "-c", "unix_socket_directories="),
                SUPERUSER,
            ],
            set_password_sql(SUPERUSER, password),
            "setting the run's password",
        ),
    ):
        result = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            cwd=dest.parent,
            **user.popen_kwargs(),
        )
        errors = [line for line in result.stdout.splitlines() if "ERROR" in line]
        if result.returncode != 0 or errors:
            last = errors or (result.stderr or result.stdout).strip().splitlines()
            raise ServerFailed(f"{what} failed: {last[-1] if last else result.returncode}")
    return dest
