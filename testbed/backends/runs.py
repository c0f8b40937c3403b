"""Run directories: where a run keeps its servers' data and the record of what it started.

Every process a run starts is written to `run.json` before the runner waits for it, so a
runner that crashes (or is SIGKILLed) leaves enough behind for `testbed down` to find and
stop its servers. The record is rewritten atomically, so a reader never sees half of it.

Runs are made under many homes (a benchmark's or a test session's temporary folder, the
user's `.testbed`), so each is also *registered*: a file per run in one folder per user
on the machine, naming the run's folder, removed with the run. `testbed down --all` stops
every registered run too, wherever its home was: a benchmark or a test session killed with
SIGKILL leaves nothing that `down --all` cannot find.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from testbed import procs

MANIFEST = "run.json"
REGISTRY_ENV = "TESTBED_RUN_REGISTRY"  # another registry folder (tests)


def home_dir(explicit: str | Path | None = None) -> Path:
    """The folder holding `runs/`: `--home`, `TESTBED_HOME`, else `.testbed` here."""
    return Path(explicit or os.environ.get("TESTBED_HOME") or ".testbed").absolute()


@dataclass
class ServerRecord:
    name: str
    site: str
    role: str
    host: str
    port: int
    datadir: str
    pid: int | None = None


@dataclass
class ProcessRecord:
    """A helper process of the run (the WAN proxy; later ICONs and GIMs)."""

    name: str
    pid: int
    marker: str  # a string of its command line, checked before it is signalled
    address: str | None = None


@dataclass
class RunManifest:
    id: str
    created: float
    owner_pid: int
    owner: str  # "cli-up" runs wait for Ctrl-C and may be told to stop; others may not
    backend: str
    data_root: str
    topology: str | None = None
    detached: bool = False
    servers: dict[str, ServerRecord] = field(default_factory=dict)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    # What operator procedures changed (replication roles, failed sites, added sites), so
    # the next `testbed dr` command on this run starts from where the last one left it.
    dr_state: dict = field(default_factory=dict)


class RunDir:
    """One run's folder and its manifest; safe to update from several threads."""

    def __init__(self, path: Path, manifest: RunManifest) -> None:
        self.path = path
        self.manifest = manifest
        self._lock = threading.Lock()

    @classmethod
    def create(cls, home: Path, backend: str, owner: str) -> RunDir:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        path = home / "runs" / run_id
        path.mkdir(parents=True)
        manifest = RunManifest(
            id=run_id,
            created=time.time(),
            owner_pid=os.getpid(),
            owner=owner,
            backend=backend,
            data_root=str(path),
        )
        run = cls(path, manifest)
        run.save()
        register(run.path)
        return run

    @classmethod
    def load(cls, path: Path) -> RunDir:
        raw = json.loads((path / MANIFEST).read_text())
        servers = {k: ServerRecord(**v) for k, v in raw.pop("servers", {}).items()}
        processes = {k: ProcessRecord(**v) for k, v in raw.pop("processes", {}).items()}
        return cls(path, RunManifest(**raw, servers=servers, processes=processes))

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def data_root(self) -> Path:
        return Path(self.manifest.data_root)

    def save(self) -> None:
        with self._lock:
            tmp = self.path / f".{MANIFEST}.{threading.get_ident()}"
            tmp.write_text(json.dumps(asdict(self.manifest), indent=2))
            tmp.replace(self.path / MANIFEST)

    def record(self, server: ServerRecord) -> None:
        with self._lock:
            self.manifest.servers[server.name] = server
        self.save()

    def record_process(self, process: ProcessRecord) -> None:
        with self._lock:
            self.manifest.processes[process.name] = process
        self.save()

    def forget_process(self, name: str) -> None:
        with self._lock:
            self.manifest.processes.pop(name, None)
        self.save()

    def live_processes(self) -> list[ProcessRecord]:
        return [p for p in self.manifest.processes.values() if procs.is_ours(p.pid, p.marker)]

    def update(self, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.manifest, key, value)
        self.save()

    def live_servers(self) -> list[ServerRecord]:
        return [
            s for s in self.manifest.servers.values() if s.pid and procs.is_ours(s.pid, s.datadir)
        ]

    def owner_alive(self) -> bool:
        return procs.alive(self.manifest.owner_pid)

    def remove(self) -> None:
        """The run's folder is deleted now; its server data, when kept outside it (in RAM,
        say), is moved aside and deleted in the background: data directories are
        thousands of files, and a fuzz campaign removes hundreds of them. The run's folder
        may be in the caller's own temporary folder, which it may delete next."""
        if not self.data_root.is_relative_to(self.path):
            discard(self.data_root)
        shutil.rmtree(self.path, ignore_errors=True)
        unregister(self.path)


DISCARDED = ".discarded"


def discard(folder: Path) -> None:
    """Move `folder` aside in its parent (a rename: gone at once), then delete it in a
    process of its own, which finishes even if this one exits first; inline where that
    cannot be done."""
    if not folder.exists():
        return
    # Named without the run's id: a process whose command line names a run is one of its.
    aside = folder.with_name(f"{DISCARDED}-{secrets.token_hex(6)}")
    try:
        folder.rename(aside)
    except OSError:
        aside = folder
    try:  # `sh` starts `rm` in the background and ends: `rm` is nobody's child to wait for
        subprocess.run(
            ["sh", "-c", 'rm -rf -- "$1" >/dev/null 2>&1 &', "discard", str(aside)],
            stdin=subprocess.DEVNULL,
            check=True,
            start_new_session=True,
        )
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(aside, ignore_errors=True)


def registry() -> Path:
    """This user's registry of runs on this machine."""
    default = Path(tempfile.gettempdir()) / f"bc-testbed-runs-{os.getuid()}"
    folder = Path(os.environ.get(REGISTRY_ENV) or default)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _entry(path: Path) -> Path:
    return registry() / path.absolute().as_posix().strip("/").replace("/", "%")


def register(path: Path) -> None:
    with contextlib.suppress(OSError):  # no registry: `down` still finds it under its home
        _entry(path).write_text(str(path.absolute()))


def unregister(path: Path) -> None:
    with contextlib.suppress(OSError):
        _entry(path).unlink(missing_ok=True)


def registered_runs() -> list[RunDir]:
    """Every run this user has on this machine, whatever its home; an entry whose run
    folder is gone is dropped."""
    found = []
    try:
        entries = sorted(registry().iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            found.append(RunDir.load(Path(entry.read_text())))
        except (OSError, ValueError, TypeError):
            entry.unlink(missing_ok=True)
    return sorted(found, key=lambda run: run.manifest.created)


def list_runs(home: Path) -> list[RunDir]:
    """Every run under `home`, oldest first; folders without a readable manifest are skipped."""
    runs = []
    for path in sorted((home / "runs").glob("*")):
        try:
            runs.append(RunDir.load(path))
        except (OSError, ValueError, TypeError):
            continue
    return runs


def stop_run(run: RunDir, keep: bool = False) -> list[str]:
    """Stop whatever the run left running; returns the names of servers that were stopped.

    Used by `testbed down` on runs whose runner is gone or detached: the pids come from the
    manifest and are checked against their data directory before any signal is sent.
    """
    owner = run.manifest.owner_pid
    if run.manifest.owner == "cli-up" and owner != os.getpid() and procs.is_ours(owner, "testbed"):
        procs.signal_pid(owner, signal.SIGTERM)  # the waiting `testbed up` cleans up itself
        procs.wait_until(lambda: not procs.alive(owner), 30.0, 0.05)
    stopped = []
    for server in run.live_servers():
        assert server.pid is not None  # live servers have a pid
        procs.stop_group(server.pid, server.pid)
        stopped.append(server.name)
    for process in run.live_processes():
        procs.stop_group(process.pid, process.pid, signal.SIGTERM, timeout=10.0)
    if not keep:
        run.remove()
    return stopped
