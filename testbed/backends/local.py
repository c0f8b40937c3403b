"""The embedded backend: every server is a real `postgres` process on a loopback port.

One `LocalBackend` is one run: a run directory, the servers started in it, and the promise
that they all stop when the run ends, however it ends (normal exit, exception, Ctrl-C).
Servers are started in their own session and process group so that a terminal's Ctrl-C
reaches the runner, which stops them in order, and so that `pause` and `kill` can reach a
server's backends as well as its postmaster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testbed import procs
from testbed.backends import runs, sysvshm
from testbed.backends.osuser import ServerUser, server_user
from testbed.backends.pgbin import PgBinaries, find_binaries
from testbed.backends.proxyproc import NAME as PROXY_NAME
from testbed.backends.proxyproc import ProxyProcess
from testbed.backends.storage import data_root_for, storage_choice
from testbed.backends.template import SERVER_CONF, SUPERUSER, ensure_template, personalise
from testbed.credentials import ENV as PASSFILE_ENV
from testbed.credentials import PASSFILE_NAME, new_password, read_password, write_passfile
from testbed.errors import MissingBinaries, PortInUse, ServerFailed, TestbedError
from testbed.netfault.client import ToxiproxyClient
from testbed.ports import LOOPBACK, free_port, port_is_free
from testbed.postgres import Server
from testbed.topology import Topology

START_TIMEOUT_S = 60.0


# PostgreSQL's shutdown modes: `smart` waits for clients, `fast` disconnects them,
# `immediate` quits at once (crash recovery at the next start).
SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class LocalNode:
    """Process control and data directory of one server; `Server` adds the SQL vocabulary."""

    def __init__(
        self, backend: LocalBackend, name: str, site: str, role: str, port: int | None
    ) -> None:
        self.backend = backend
        self.name = name
        self.site = site
        self.role = role
        self.host = LOOPBACK
        self.fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.dir = backend.data_root / "servers" / name
        self.datadir = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self.backups = backend.data_root / "backups" / name
        self.pid: int | None = None
        self.primary_conninfo: str | None = None  # set while configured as a standby
        self.passfile: Path | None = backend.passfile  # clients and this server's WAL receiver
        self._proc: subprocess.Popen | None = None
        self.dir.mkdir(parents=True)
        backend.user.own(self.dir)

    @classmethod
    def existing(cls, backend: LocalBackend, record: runs.ServerRecord) -> LocalNode:
        """The node of a server another command started (a detached run), from its record."""
        node = cls.__new__(cls)
        node.backend = backend
        node.name, node.site, node.role = record.name, record.site, record.role
        node.host, node.port, node.fixed_port = record.host, record.port, True
        node.datadir = Path(record.datadir)
        node.dir = node.datadir.parent
        node.logfile = node.dir / "server.log"
        node.backups = backend.data_root / "backups" / record.name
        node.passfile = backend.passfile
        alive = record.pid is not None and procs.is_ours(record.pid, record.datadir)
        node.pid = record.pid if alive else None
        node._proc = None
        node.primary_conninfo = None
        conf = node.datadir / SERVER_CONF
        if (node.datadir / "standby.signal").exists() and conf.exists():
            for line in conf.read_text().splitlines():
                if line.startswith("primary_conninfo = "):
                    node.primary_conninfo = line.split("= ", 1)[1].strip("'").replace("''", "'")
        return node

    # --- data directory -------------------------------------------------------------

    def init(self) -> None:
        """A fresh cluster, copied from the cached template."""
        self._copy_tree(self.backend.template, self.datadir)
        self.configure()

    def restore(self, backup: Path) -> None:
        """This server's data directory becomes a copy of a base backup."""
        if not backup.is_dir():
            raise ServerFailed(f"{self.name}: no backup at {backup}")
        self._copy_tree(backup, self.datadir)
        self.configure()

    def wipe(self) -> None:
        """Remove the data directory of a stopped server, before a restore replaces it."""
        if self.state() != "stopped":
            raise ServerFailed(f"{self.name} is {self.state()}; stop it before wiping its data")
        shutil.rmtree(self.datadir, ignore_errors=True)

    def configure(self, primary_conninfo: str | None = None) -> None:
        """Write this server's own settings; with a conninfo it starts as a streaming standby."""
        lines = [
            f"port = {self.port}",
            f"listen_addresses = '{self.host}'",
            f"cluster_name = 'testbed-{self.name}'",
        ]
        signal_file = self.datadir / "standby.signal"
        self.primary_conninfo = primary_conninfo
        if primary_conninfo is not None:
            quoted = primary_conninfo.replace("'", "''")
            lines.append(f"primary_conninfo = '{quoted}'")
            self._write(signal_file, "")
        else:
            signal_file.unlink(missing_ok=True)
        self._write(self.datadir / SERVER_CONF, "\n".join(lines) + "\n")

    @property
    def standby(self) -> bool:
        return self.primary_conninfo is not None

    def basebackup(self, name: str, host: str, port: int) -> Path:
        """`pg_basebackup` of this server, reached at host:port (directly or via a proxy)."""
        dest = self.backups / name
        if dest.exists():
            raise ServerFailed(f"{self.name}: backup '{name}' exists already")
        self.backups.mkdir(parents=True, exist_ok=True)
        self.backend.user.own(self.backups)
        self._run_as_server(
            [
                self.backend.bins.path("pg_basebackup"),
                "--host",
                host,
                "--port",
                str(port),
                "--username",
                SUPERUSER,
                "--pgdata",
                str(dest),
                "--wal-method",
                "stream",
                "--checkpoint",
                "fast",
                "--no-sync",
            ],
            what=f"pg_basebackup of {self.name}",
        )
        return dest

    def rewind(self, host: str, port: int) -> None:
        """`pg_rewind` this stopped server's data to the timeline of the server at host:port
        (after a crash it first runs recovery to a clean shutdown, as pg_rewind does)."""
        source = f"host={host} port={port} user={SUPERUSER} dbname=postgres"
        self._run_as_server(
            [
                self.backend.bins.path("pg_rewind"),
                "--target-pgdata",
                str(self.datadir),
                "--source-server",
                source,
                "--no-sync",
            ],
            what=f"pg_rewind of {self.name}",
        )

    def _copy_tree(self, source: Path, dest: Path) -> None:
        if dest.exists():
            raise ServerFailed(f"{self.name}: data directory {dest} exists already")
        self._run_as_server(["cp", "-a", str(source), str(dest)], what=f"copy into {dest}")

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        self.backend.user.own(path)

    def _run_as_server(self, argv: list[str], what: str) -> None:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.dir,
            env={**_server_env(), PASSFILE_ENV: str(self.passfile)},
            **self.backend.user.popen_kwargs(),
        )
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()
            raise ServerFailed(f"{what} failed: {last[-1] if last else result.returncode}")

    # --- process control ------------------------------------------------------------

    def state(self) -> str:
        return procs.run_state(self.pid)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.state() != "stopped":
            raise ServerFailed(f"{self.name} is already {self.state()}")
        self._check_version()
        self._forget_dead_postmaster()
        for attempt in range(3):
            if not port_is_free(self.host, self.port):
                if self.fixed_port:
                    raise PortInUse(
                        f"{self.name}: port {self.port} on {self.host} is in use; free it or "
                        "choose another port in the topology file"
                    )
                self.port = free_port()  # an auto-chosen port was taken meanwhile: pick again
                self.configure(self.primary_conninfo)  # same settings, new port
            try:
                self._spawn(timeout)
                return
            except _BindFailed:
                if self.fixed_port or attempt == 2:
                    raise PortInUse(
                        f"{self.name}: port {self.port} on {self.host} is in use"
                    ) from None
                self.port = free_port()
                self.configure(self.primary_conninfo)  # same settings, new port

    def _check_version(self) -> None:
        """One major version per topology: a standby cloned from a primary of another
        version, or a run reopened with other binaries, is refused in one line before
        PostgreSQL fails on it with a page of log."""
        marker = self.datadir / "PG_VERSION"
        try:
            data_version = marker.read_text().strip()
        except OSError:
            return  # not initialised yet: initdb writes the binaries' own version
        bins = self.backend.bins
        if data_version != bins.version:
            raise ServerFailed(
                f"{self.name}: its data is PostgreSQL {data_version} but the binaries in use"
                f" are PostgreSQL {bins.version} ({bins.bindir}); a topology runs one major"
                f" version (a standby must match its primary): point TESTBED_PG_BIN at"
                f" PostgreSQL {data_version} binaries"
            )

    def _spawn(self, timeout: float) -> None:
        log_start = self.logfile.stat().st_size if self.logfile.exists() else 0
        with open(self.logfile, "ab") as log:
            self._proc = subprocess.Popen(
                [self.backend.bins.path("postgres"), "-D", str(self.datadir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.dir,
                start_new_session=True,
                # Its WAL receiver authenticates to its primary with the run's password.
                env={**_server_env(), PASSFILE_ENV: str(self.passfile)},
                **self.backend.user.popen_kwargs(),
            )
        self.pid = self._proc.pid
        self.backend.record(self)
        if not self._wait_ready(timeout):
            tail = self._log_since(log_start)
            self._reap_failed()
            if "could not bind" in tail or "Address already in use" in tail:
                raise _BindFailed()
            last = [line for line in tail.splitlines() if line.strip()]
            detail = last[-1] if last else f"no answer within {timeout:.0f}s"
            raise ServerFailed(f"{self.name} did not start: {detail} (log: {self.logfile})")

    def _wait_ready(self, timeout: float) -> bool:
        """Ready means accepting connections, as a primary or as a hot standby."""
        pidfile = self.datadir / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            try:
                lines = pidfile.read_text().splitlines()
            except (FileNotFoundError, PermissionError):
                lines = []
            # After a crash the old file is still there: only our postmaster's line counts.
            fresh = bool(lines) and lines[0].strip() == str(self.pid)
            if fresh and len(lines) >= 8 and lines[7].strip() in ("ready", "standby"):
                return True
            time.sleep(0.01)
        return False

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.logfile, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _reap_failed(self) -> None:
        if self.pid is not None:
            procs.stop_group(self.pid, self.pid, signal.SIGQUIT, timeout=5.0)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        self._proc = None
        self.pid = None
        self._release_dead_postmasters_memory()
        self.backend.record(self)

    def _lock_file_pid(self) -> int | None:
        """The postmaster its lock file names (None: no lock file, as after a clean stop)."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _release_dead_postmasters_memory(self) -> None:
        """A postmaster that died without a clean shutdown (killed, or escalated to
        SIGKILL) leaves its System V segment: see `sysvshm`."""
        pid = self._lock_file_pid()
        if pid is not None and not procs.alive(pid):
            sysvshm.release_dead_postmasters_segment(self.datadir / "postmaster.pid")

    def stop(
        self, mode: str = "fast", timeout: float = 30.0, patience: float | None = None
    ) -> None:
        """Shut down: `smart` waits for clients, `fast` disconnects them, `immediate` crashes.
        After `patience` wall seconds, one still under way is made immediate."""
        sig = SHUTDOWN_SIGNALS[mode]
        pid = self.pid
        if pid is not None and procs.alive(pid):
            procs.signal_tree(pid, signal.SIGCONT)  # a frozen backend cannot exit
            if patience is not None and mode != "immediate":
                procs.signal_pid(pid, sig)
                if not procs.wait_until(lambda: not procs.alive(pid), patience):
                    sig = SHUTDOWN_SIGNALS["immediate"]
            procs.stop_group(pid, pid, sig, timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends at once, as a host crash would."""
        if self.pid is None:
            raise ServerFailed(f"{self.name} is not running")
        pid = self.pid
        backends = procs.children(pid)
        procs.signal_group(pid, signal.SIGKILL)
        for backend in backends:
            procs.signal_pid(backend, signal.SIGKILL)
        procs.wait_until(lambda: not procs.group_alive(pid), 10.0)
        procs.wait_until(lambda: not any(procs.alive(b) for b in backends), 10.0)
        self._reap()

    def _forget_dead_postmaster(self) -> None:
        """A postmaster killed by a process other than its parent (`testbed dr fail-site`
        on a detached run) is a zombie until its parent reaps it, and PostgreSQL takes the
        PID in its lock file for a live server ("Is another postmaster running?"). Dead
        is dead: its lock file goes."""
        pid = self._lock_file_pid()
        if pid is not None and not procs.alive(pid):
            self._release_dead_postmasters_memory()
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)

    def pause(self) -> None:
        """Freeze every process of the server (SIGSTOP): it holds connections, answers nothing."""
        if self.state() != "running":
            raise ServerFailed(f"{self.name} is {self.state()}, cannot pause")
        pid = self.pid
        assert pid is not None  # running
        # The postmaster first, so that it forks no new backend meanwhile; then each
        # backend, which is in a session of its own (see `procs.children`).
        procs.signal_group(pid, signal.SIGSTOP)
        procs.wait_until(lambda: procs.paused(pid), 5.0)
        for backend in procs.children(pid):
            procs.signal_pid(backend, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid is None:
            raise ServerFailed(f"{self.name} is not running")
        pid = self.pid
        for backend in procs.children(pid):
            procs.signal_pid(backend, signal.SIGCONT)
        procs.signal_group(pid, signal.SIGCONT)
        procs.wait_until(lambda: not procs.paused(pid), 5.0)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop (if running) and start again on the same port with the same data."""
        if self.state() != "stopped":
            self.stop()
        self.start(timeout)


class _BindFailed(Exception):
    pass


def _server_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}


class LocalBackend:
    """One run on the local machine; a context manager that always stops what it started."""

    name = "local"

    def __init__(
        self,
        home: str | Path | None = None,
        keep: bool = False,
        owner: str = "library",
        bins: PgBinaries | None = None,
        storage: str | None = None,
    ) -> None:
        self.bins = bins or find_binaries()
        self.user: ServerUser = server_user()
        if not self.user.can_reach(self.bins.bindir):
            raise MissingBinaries(
                f"the server account '{self.user.name}' cannot reach the PostgreSQL binaries in"
                f" {self.bins.bindir} (a folder only root may enter, such as /root); put the"
                " checkout where others can traverse, install a system PostgreSQL, or set"
                " TESTBED_PG_BIN"
            )
        self.cached_template = ensure_template(self.bins, self.user)
        self._template: Path | None = None
        self._template_lock = threading.Lock()
        self.keep = keep
        home_path = runs.home_dir(home)
        home_path.mkdir(parents=True, exist_ok=True)
        self.run = runs.RunDir.create(home_path, self.name, owner)
        try:
            self.data_root = data_root_for(self.run.path, self.user, storage_choice(storage))
            self.run.update(data_root=str(self.data_root))
            self.passfile = write_passfile(self.data_root, new_password())
            self.user.own(self.passfile)
        except BaseException:
            self.run.remove()
            raise
        self.nodes: dict[str, LocalNode] = {}
        self.servers: dict[str, Server] = {}
        self.proxy: ProxyProcess | None = None
        self.attached_proxy: ToxiproxyClient | None = None
        self.attached = False

    @classmethod
    def attach(cls, home: str | Path | None = None, run_id: str | None = None) -> LocalBackend:
        """The backend of a run left running (`testbed up --detach`), to act on it: its
        servers and its WAN proxy as they are. Closing it leaves them running."""
        home_path = runs.home_dir(home)
        found = [r for r in runs.list_runs(home_path) if r.manifest.backend == cls.name]
        if run_id is not None:
            found = [r for r in found if r.id == run_id]
        found = [r for r in found if r.live_servers()]
        if not found:
            which = f"run '{run_id}'" if run_id else "no running topology"
            raise TestbedError(
                f"{which} under {home_path} with servers up; start one with "
                "`testbed up --detach` (see `testbed status`)"
            )
        run = found[-1]
        backend = cls.__new__(cls)
        backend.bins = find_binaries()
        backend.user = server_user()
        backend.cached_template = ensure_template(backend.bins, backend.user)
        backend.keep = True
        backend.attached = True
        backend.run = run
        backend.data_root = run.data_root
        backend.passfile = run.data_root / PASSFILE_NAME
        made = run.data_root / "template"
        backend._template_lock = threading.Lock()
        backend._template = made if (made / "PG_VERSION").exists() else None
        backend.nodes = {
            name: LocalNode.existing(backend, record)
            for name, record in run.manifest.servers.items()
        }
        backend.servers = {name: Server(node) for name, node in backend.nodes.items()}
        backend.proxy = None
        proxy = run.manifest.processes.get(PROXY_NAME)
        backend.attached_proxy = ToxiproxyClient(proxy.address) if proxy and proxy.address else None
        return backend

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def template(self) -> Path:
        """The run's own copy of the cached template, with the run's password (made on
        first use: a run that only attaches or restores never pays for it)."""
        with self._template_lock:
            if self._template is None:
                self._template = personalise(
                    self.cached_template,
                    self.data_root / "template",
                    self.bins,
                    self.user,
                    read_password(self.passfile),
                )
            return self._template

    def new_server(
        self, name: str, site: str = "site1", role: str = "idb", port: int | None = None
    ) -> Server:
        """A server handle with an empty data directory: call `init()` or `init_from_backup`."""
        if name in self.nodes:
            raise TestbedError(f"server '{name}' exists already in run {self.id}")
        node = LocalNode(self, name, site, role, port)
        self.nodes[name] = node
        server = Server(node)
        self.servers[name] = server
        return server

    # Every server's data starts as a copy of one cached template (`LocalNode.init`), so a
    # copy made before a primary first starts can follow it as a standby (`bring_up`).
    clones_one_template = True

    def start_proxy(self) -> ToxiproxyClient:
        """The run's WAN proxy server (started on first use) and a client for its API."""
        if self.attached_proxy is not None:
            return self.attached_proxy
        if self.proxy is None:
            self.proxy = ProxyProcess(self.run, free_port())
            try:
                self.proxy.start()
            except BaseException:
                self.proxy = None
                raise
        return self.proxy.client

    # Where WAN routes listen and what they dial: loopback addresses here, the same from
    # every client (the docker backend differs: container ports and in-network names).

    def route_listen(self) -> str:
        return f"{LOOPBACK}:0"

    def upstream(self, server: str) -> str:
        return self.servers[server].address

    def published(self, listen: str) -> str:
        return listen

    def leftovers(self) -> list[int]:
        """Servers of this run still running after `close()` (a defect if any)."""
        return [s.pid for s in self.run.manifest.servers.values() if s.pid and procs.alive(s.pid)]

    def preflight(self, topology: Topology) -> None:
        """Every fixed port of the topology must be free before the first server starts."""
        for spec in topology.servers:
            if spec.port is not None and not port_is_free(LOOPBACK, spec.port):
                raise PortInUse(
                    f"{spec.name}: port {spec.port} on {LOOPBACK} is in use; free it or "
                    "choose another port in the topology file"
                )

    def record(self, node: LocalNode) -> None:
        self.run.record(
            runs.ServerRecord(
                node.name, node.site, node.role, node.host, node.port, str(node.datadir), node.pid
            )
        )

    def stop_all(self, mode: str = "fast") -> None:
        """Stop every server, standbys first so they do not log their primary vanishing;
        each group at once (a fast shutdown is mostly waiting, and a run stops six)."""
        errors: list[str] = []

        def stop(node: LocalNode) -> None:
            try:
                if node.state() != "stopped":
                    node.stop(mode)
            except Exception as exc:  # keep stopping the others
                errors.append(f"{node.name}: {exc}")

        for standby in (True, False):
            group = [n for n in self.nodes.values() if n.standby == standby]
            if len(group) > 1:
                with ThreadPoolExecutor(max_workers=len(group)) as pool:
                    list(pool.map(stop, group))
            else:
                for node in group:
                    stop(node)
        if errors:
            raise ServerFailed("could not stop every server: " + "; ".join(errors))

    def close(self) -> None:
        if self.attached:  # another command started these servers; they stay up
            return
        try:
            # Data about to be deleted needs no shutdown checkpoint: an immediate stop is
            # safe then, and saves a run most of its teardown.
            self.stop_all("fast" if self.keep else "immediate")
        finally:
            if self.proxy is not None:
                self.proxy.stop()
                self.proxy = None
            if self.keep:
                self.run.update(detached=False)
            else:
                self.run.remove()

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
