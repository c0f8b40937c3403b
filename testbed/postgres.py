"""A handle on one PostgreSQL server, in the vocabulary of PostgreSQL's own test harness.

`backup`, `init_from_backup(streaming=True)`, `wait_for_catchup`, `promote` read like the
operator's runbook (and like `PostgreSQL::Test::Cluster`), so scenarios and tests say what
they do. Where the server runs (a local process, a container) is the backend's business:
the handle delegates process control and file work to a node with the `ServerNode` shape.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg

from testbed.errors import ServerFailed

SUPERUSER = "postgres"


class ServerNode(Protocol):
    """What a backend provides for one server."""

    name: str
    site: str
    role: str
    host: str
    port: int
    pid: int | None
    passfile: Path | None  # the run's libpq password file, as this machine's clients read it

    def init(self) -> None: ...
    def restore(self, backup: Path) -> None: ...
    def wipe(self) -> None: ...
    def configure(self, primary_conninfo: str | None = None) -> None: ...
    def basebackup(self, name: str, host: str, port: int) -> Path: ...
    def rewind(self, host: str, port: int) -> None: ...
    def state(self) -> str: ...
    def start(self, timeout: float = ...) -> None: ...
    def stop(self, mode: str = ..., timeout: float = ..., patience: float | None = ...) -> None: ...
    def kill(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def restart(self, timeout: float = ...) -> None: ...


@contextlib.contextmanager
def deadline(conn: psycopg.Connection, seconds: float) -> Iterator[None]:
    """Fail whatever `conn` is doing once `seconds` have passed, even if no byte comes back.

    A server-side `statement_timeout` cannot help across a black-holed WAN: the server
    cancels the query, but its error never arrives. TCP cannot help either when a proxy
    acknowledges every byte. So the client keeps its own clock: at the deadline the socket
    is shut down under libpq, and the blocked call fails with an OperationalError.
    """
    timer = threading.Timer(seconds, shut_down, (conn,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def shut_down(conn: psycopg.Connection) -> None:
    """Shut down the socket `conn` holds now. Never a descriptor number kept from before:
    once `conn` is closed, the number may belong to a new connection (a timer of a process
    that was frozen fires late, after its caller has reconnected)."""
    if conn.closed:
        return
    try:
        fd = conn.fileno()
    except psycopg.Error:
        return
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def parse_lsn(text: str) -> int:
    """`'0/3000148'` -> an integer, so LSNs compare and subtract like numbers."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def split_address(via: str) -> tuple[str, int]:
    host, _, port = via.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{via!r} is not host:port")
    return host.strip("[]"), int(port)


class Server:
    def __init__(self, node: ServerNode) -> None:
        self.node = node
        self._backups: dict[str, Path] = {}

    def __repr__(self) -> str:
        return f"Server({self.name}, {self.host}:{self.port}, {self.state()})"

    # --- identity -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def site(self) -> str:
        return self.node.site

    @property
    def role(self) -> str:
        return self.node.role

    @property
    def host(self) -> str:
        return self.node.host

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def pid(self) -> int | None:
        return self.node.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # --- lifecycle (the one process-handle shape) ---------------------------------------

    def init(self) -> Server:
        self.node.init()
        return self

    def start(self, timeout: float = 60.0) -> Server:
        self.node.start(timeout)
        return self

    def stop(self, mode: str = "fast", patience: float | None = None) -> None:
        """Shut down in `mode`; with `patience` (wall seconds), a shutdown still waiting then
        is made immediate: a fast shutdown waits for its walsenders to hand the shutdown
        checkpoint to every standby, which behind a black-holed WAN takes until the
        replication timeout, and at 1h = 1s every wall second is a scenario hour. Immediate
        keeps every committed transaction (the WAL is on disk); the restart recovers."""
        self.node.stop(mode, patience=patience)

    def kill(self) -> None:
        self.node.kill()

    def pause(self) -> None:
        self.node.pause()

    def resume(self) -> None:
        self.node.resume()

    def restart(self) -> None:
        self.node.restart()

    def state(self) -> str:
        return self.node.state()

    # --- SQL ----------------------------------------------------------------------------

    @property
    def passfile(self) -> Path | None:
        return self.node.passfile

    def conninfo(self, dbname: str = "postgres", **extra: Any) -> str:
        """A DSN that authenticates (it names the run's password file, never the password)."""
        if self.node.passfile is not None:
            extra.setdefault("passfile", str(self.node.passfile))
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=SUPERUSER, dbname=dbname, **extra
        )

    def connect(
        self, dbname: str = "postgres", autocommit: bool = True, connect_timeout: int = 5, **kw: Any
    ) -> psycopg.Connection:
        return psycopg.connect(
            self.conninfo(dbname, connect_timeout=connect_timeout, **kw), autocommit=autocommit
        )

    def execute(self, sql: str, params: Any = None, dbname: str = "postgres") -> list[tuple]:
        """Run one statement in its own connection; the rows it returns, if any."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, params: Any = None, dbname: str = "postgres") -> Any:
        rows = self.execute(sql, params, dbname)
        return rows[0][0] if rows else None

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Until a connection succeeds; the last connection error if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect(connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise ServerFailed(
                        f"{self.name} not ready after {timeout:.0f}s: {exc}"
                    ) from None
                time.sleep(0.02)

    # --- replication ----------------------------------------------------------------------

    def is_in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def lsn(self, kind: str = "write") -> int | None:
        """An LSN of this server: insert/write/flush on a primary, receive/replay on a standby."""
        functions = {
            "insert": "pg_current_wal_insert_lsn()",
            "write": "pg_current_wal_lsn()",
            "flush": "pg_current_wal_flush_lsn()",
            "receive": "pg_last_wal_receive_lsn()",
            "replay": "pg_last_wal_replay_lsn()",
        }
        if kind not in functions:
            raise ValueError(f"unknown LSN kind {kind!r}; one of {', '.join(functions)}")
        value = self.scalar(f"SELECT {functions[kind]}::text")
        return parse_lsn(value) if value else None

    def current_lsn(self) -> int:
        lsn = self.lsn("write")
        assert lsn is not None
        return lsn

    def replay_lsn(self) -> int | None:
        return self.lsn("replay")

    def backup(self, name: str, via: str | None = None) -> Path:
        """A base backup of this server, taken over the network (through `via` if given)."""
        host, port = split_address(via) if via else (self.host, self.port)
        path = self.node.basebackup(name, host, port)
        self._backups[name] = path
        return path

    def backup_path(self, name: str) -> Path:
        if name not in self._backups:
            raise ServerFailed(f"{self.name} has no backup named '{name}'")
        return self._backups[name]

    def init_from_backup(
        self, root: Server, backup_name: str, streaming: bool = False, via: str | None = None
    ) -> Server:
        """This server's data becomes `root`'s backup; with `streaming`, a standby of `root`.

        `via` is the host:port the standby dials to reach its primary (a WAN proxy); it
        defaults to the primary's own address.
        """
        self.node.restore(root.backup_path(backup_name))
        if streaming:
            self.node.configure(primary_conninfo=self._primary_conninfo(root, via))
        return self

    def _primary_conninfo(self, root: Server, via: str | None) -> str:
        host, port = split_address(via) if via else (root.host, root.port)
        return psycopg.conninfo.make_conninfo(
            host=host, port=port, user=SUPERUSER, application_name=self.name
        )

    def rebuild_from(self, root: Server, backup_name: str, via: str | None = None) -> Server:
        """Throw this server's data away and make it a streaming standby of `root` from a
        base backup (the way back for an old primary that cannot simply follow)."""
        if self.state() != "stopped":
            self.stop()
        self.node.wipe()
        return self.init_from_backup(root, backup_name, streaming=True, via=via)

    def rewind_from(self, root: Server, via: str | None = None) -> Server:
        """Make this old primary a streaming standby of `root`, which was promoted from its
        standby: `pg_rewind` copies only the blocks that changed since their timelines
        forked, where a base backup copies everything. Needs `wal_log_hints` (on in every
        server here) and the WAL since the fork still on `root`."""
        if self.state() != "stopped":
            self.stop()
        # A newly promoted server's control file shows its new timeline only after its
        # next checkpoint; pg_rewind reads it there ("no rewind required" otherwise).
        root.execute("CHECKPOINT")
        host, port = split_address(via) if via else (root.host, root.port)
        self.node.rewind(host, port)
        self.node.configure(primary_conninfo=self._primary_conninfo(root, via))
        return self

    def follow(self, root: Server, via: str | None = None) -> Server:
        """Configure this stopped server as a streaming standby of `root`, keeping its data:
        right for a primary shut down cleanly after `root` replayed all of its WAL, and for
        a copy of the template `root` was copied from, made before `root` first started
        (the same cluster at the same checkpoint: it replays all `root` writes after it)."""
        if self.state() != "stopped":
            raise ServerFailed(f"{self.name} is {self.state()}; stop it before it follows")
        self.node.configure(primary_conninfo=self._primary_conninfo(root, via))
        return self

    def streaming(self) -> bool:
        """This standby's WAL receiver is connected and streaming."""
        try:
            return self.scalar("SELECT status FROM pg_stat_wal_receiver") == "streaming"
        except psycopg.Error:
            return False

    def wait_for_catchup(
        self,
        standby: Server,
        mode: str = "replay",
        target_lsn: int | None = None,
        timeout: float = 60.0,
    ) -> int:
        """Until `standby` has received/replayed this server's WAL up to `target_lsn`.

        The target defaults to this server's current write LSN. Returns the standby's LSN.
        """
        if mode not in ("receive", "replay"):
            raise ValueError("mode is 'receive' or 'replay'")
        target = target_lsn if target_lsn is not None else self.current_lsn()
        deadline = time.monotonic() + timeout
        reached: int | None = None
        while True:
            try:
                reached = standby.lsn(mode)
            except psycopg.OperationalError:
                reached = None
            if reached is not None and reached >= target:
                return reached
            if time.monotonic() >= deadline:
                seen = format_lsn(reached) if reached is not None else "nothing"
                raise ServerFailed(
                    f"{standby.name} did not {mode} {self.name}'s WAL up to {format_lsn(target)} "
                    f"within {timeout:.0f}s (reached {seen})"
                )
            time.sleep(0.02)

    def promote(self, timeout: float = 60.0) -> None:
        """End recovery on this standby and make it accept writes."""
        if not self.is_in_recovery():
            raise ServerFailed(f"{self.name} is not a standby; nothing to promote")
        if not self.scalar("SELECT pg_promote(true, %s)", (int(timeout),)):
            raise ServerFailed(f"{self.name} did not finish promotion within {timeout:.0f}s")
        self.node.configure(primary_conninfo=None)  # a restart must not make it a standby again
