"""Nobody gets in who does not belong: every server requires the run's password (SCRAM-SHA-256),
made per run, handed over as a libpq password file, and never printed or logged."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import psycopg
import pytest

from testbed import credentials
from testbed.backends.local import LocalBackend
from testbed.postgres import Server


@pytest.fixture
def server(testbed_backend: LocalBackend) -> Server:
    return testbed_backend.new_server("idb1").init().start()


def _connect(server: Server, **kw: object) -> psycopg.Connection:
    return psycopg.connect(
        host=server.host, port=server.port, user="postgres", dbname="postgres", **kw
    )


def test_the_run_password_file_lets_a_client_in(server: Server) -> None:
    assert server.passfile is not None
    assert server.passfile.stat().st_mode & 0o077 == 0  # only its owner reads it
    with _connect(server, passfile=str(server.passfile)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        method = conn.execute(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'"
        ).fetchone()
        assert method == (True,)


@pytest.mark.parametrize(
    "how",
    [
        {"passfile": "/dev/null"},  # no password at all
        {"password": "not-the-run-password", "passfile": "/dev/null"},
    ],
    ids=["no-password", "wrong-password"],
)
def test_a_connection_without_the_run_password_is_refused(
    server: Server, how: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(credentials.ENV, raising=False)
    with pytest.raises(psycopg.OperationalError, match="password"):
        _connect(server, **how).close()


def test_replication_requires_the_password_too(server: Server) -> None:
    """A replication connection (what a standby's WAL receiver and pg_basebackup open)."""
    with pytest.raises(psycopg.OperationalError, match="password"):
        _connect(server, passfile="/dev/null", replication="true").close()
    with _connect(server, passfile=str(server.passfile), replication="true") as conn:
        assert conn.info.parameter_status("server_version") is not None


def test_each_run_has_its_own_password(testbed_home: Path) -> None:
    with LocalBackend(home=testbed_home) as one, LocalBackend(home=testbed_home) as other:
        first = one.new_server("idb1").init().start()
        assert credentials.read_password(one.passfile) != credentials.read_password(other.passfile)
        with pytest.raises(psycopg.OperationalError, match="password"):
            _connect(first, passfile=str(other.passfile)).close()


def test_the_password_is_in_no_file_but_the_password_file(testbed_home: Path) -> None:
    """Server logs, run records and configuration hold at most the SCRAM verifier."""
    with LocalBackend(home=testbed_home, keep=True) as backend:
        primary = backend.new_server("infomart1").init().start()
        primary.backup("base")
        standby = backend.new_server("infomart2").init_from_backup(primary, "base", streaming=True)
        standby.start()
        primary.execute("CREATE TABLE t (x int)")
        primary.wait_for_catchup(standby)
        password = credentials.read_password(backend.passfile).encode()
        folders = {backend.run.path, backend.data_root}
    try:
        holders = [
            path
            for folder in folders
            for path in folder.rglob("*")
            if path.is_file()
            and path.name != credentials.PASSFILE_NAME
            and password in path.read_bytes()
        ]
    finally:
        backend.run.remove()  # kept only to be read here (its data may be in RAM)
    assert holders == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_cannot_read_the_password(server: Server) -> None:
    """The password file is the server account's own: a third account can reach the port
    (refused without the password, above), never the password."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")
    result = subprocess.run(
        ["cat", str(server.passfile)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
