"""Process faults on real servers: what each handle does to a live PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed import procs
from testbed.backends import sysvshm
from testbed.backends.local import LocalBackend
from testbed.postgres import Server, deadline


@pytest.fixture
def server(testbed_backend: LocalBackend) -> Server:
    server = testbed_backend.new_server("idb1").init().start()
    server.execute("CREATE TABLE events (id int PRIMARY KEY)")
    return server


def test_a_started_server_accepts_connections_on_its_loopback_port(server: Server) -> None:
    assert server.host == "127.0.0.1"
    assert server.scalar("SHOW port") == str(server.port)
    assert server.state() == "running"


def test_the_server_does_not_run_as_root(server: Server) -> None:
    assert server.scalar("SELECT current_setting('data_directory')")
    status = Path(f"/proc/{server.pid}/status").read_text()
    uid = int(status.split("Uid:")[1].split()[0])
    assert uid != 0


def test_stop_ends_every_process_and_start_brings_the_data_back(server: Server) -> None:
    server.execute("INSERT INTO events VALUES (1)")
    pid = server.pid
    server.stop()
    assert server.state() == "stopped"
    assert not procs.group_alive(pid)
    with pytest.raises(psycopg.OperationalError):
        server.connect(connect_timeout=1)
    server.start()
    assert server.scalar("SELECT count(*) FROM events") == 1


def test_kill_is_a_crash_that_loses_nothing_committed(server: Server) -> None:
    server.execute("INSERT INTO events SELECT generate_series(1, 1000)")
    pid, port = server.pid, server.port
    server.kill()
    assert not procs.group_alive(pid)  # postmaster and every backend are gone at once
    server.start()
    assert server.port == port
    assert server.scalar("SELECT count(*) FROM events") == 1000
    assert "database system was interrupted" in server.node.logfile.read_text()


def test_a_killed_server_leaves_no_shared_memory_behind(server: Server) -> None:
    """A server killed for good holds no memory after it: its System V segment goes (the
    kernel allows 4096, then no server starts), and its dynamic segments live in its data
    directory, not in /dev/shm until the machine reboots."""
    lock = server.node.datadir / "postmaster.pid"
    named = sysvshm.segment_of(lock)
    assert named is not None and sysvshm.attachments(*named), "a live server's segment"
    assert server.scalar("SHOW dynamic_shared_memory_type") == "mmap"
    assert any((server.node.datadir / "pg_dynshmem").iterdir())
    server.kill()
    assert lock.exists()  # a crash: the lock file stays, and names the segment
    assert sysvshm.attachments(*named) is None


def test_a_paused_server_hangs_instead_of_refusing(server: Server) -> None:
    conn = server.connect()
    server.pause()
    try:
        assert server.state() == "paused"
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            server.connect(connect_timeout=1)
        # A connection made before the pause hangs too: its backend is frozen with the
        # postmaster, though it runs in a session of its own.
        answers: list[Any] = []
        query = threading.Thread(target=lambda: answers.append(conn.execute("SELECT 1").fetchone()))
        query.start()
        query.join(0.5)
        assert query.is_alive() and answers == []
    except Exception:
        server.resume()
        raise
    server.resume()
    query.join(5.0)
    assert answers == [(1,)]
    assert server.state() == "running"
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.close()


def test_restart_keeps_data_and_port(server: Server) -> None:
    server.execute("INSERT INTO events VALUES (7)")
    port, pid = server.port, server.pid
    server.restart()
    assert (server.port, server.scalar("SELECT id FROM events")) == (port, 7)
    assert server.pid != pid


def test_the_run_record_follows_the_server(testbed_backend: LocalBackend, server: Server) -> None:
    record = testbed_backend.run.manifest.servers["idb1"]
    assert (record.pid, record.port) == (server.pid, server.port)
    server.stop()
    assert testbed_backend.run.manifest.servers["idb1"].pid is None


def test_closing_the_backend_stops_every_server(testbed_home) -> None:
    with LocalBackend(home=testbed_home) as backend:
        pids = [backend.new_server(f"s{i}").init().start().pid for i in range(2)]
        run_path = backend.run.path
    assert not any(procs.alive(pid) for pid in pids)
    assert not run_path.exists()


def test_an_exception_in_the_caller_still_stops_the_servers(testbed_home) -> None:
    pid = None
    with pytest.raises(RuntimeError), LocalBackend(home=testbed_home) as backend:
        pid = backend.new_server("s1").init().start().pid
        raise RuntimeError("the test failed")
    assert pid is not None and not procs.alive(pid)


def test_a_late_deadline_never_cuts_the_connection_that_replaced_its_own(server: Server) -> None:
    """A deadline timer of a process that was frozen fires late; by then its caller may
    have closed that connection and opened another on the same descriptor number."""
    old = server.connect()
    with deadline(old, 0.3):
        old.close()
        new = server.connect()
        time.sleep(0.6)  # the timer has fired
        assert new.execute("SELECT 1").fetchone() == (1,)
    new.close()


def test_a_standby_of_another_major_version_is_refused_in_one_line(
    testbed_backend: LocalBackend, server: Server
) -> None:
    """Binaries of two major versions in one topology (a run reopened with other ones): the
    standby cloned from the primary is refused before PostgreSQL fails on its data."""
    from testbed.backends import pgbin
    from testbed.errors import ServerFailed

    others = [
        b
        for b in (pgbin.embedded_bindir(), *pgbin._debian_candidates())
        if b is not None
        and pgbin._complete(b)
        and pgbin._major_version(b) != testbed_backend.bins.version
    ]
    if not others:
        pytest.skip("only one PostgreSQL major version is installed here")
    server.backup("b1")
    testbed_backend.bins = pgbin.PgBinaries(others[0], pgbin._major_version(others[0]))
    standby = testbed_backend.new_server("idb2").init_from_backup(server, "b1", streaming=True)
    with pytest.raises(ServerFailed) as refused:
        standby.start()
    message = str(refused.value)
    assert "\n" not in message and "a standby must match its primary" in message
    assert standby.state() == "stopped"
