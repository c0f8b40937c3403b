"""Run control for the pipeline: the data sources, ICONs and GIMs of a deployment, each an OS
process with the same verbs as a server (start, stop, kill, pause, resume, restart), and
the figures a scenario samples (queue depths, high-water marks, transform boundary, stuck
sites), readable at any time as a dict.

Every connection a component makes goes where `Deployment.address_for` says: through the
WAN proxy when it crosses sites.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import launcher, procs
from testbed.backends.runs import ProcessRecord, RunDir
from testbed.clock import Clock
from testbed.credentials import ENV as PASSFILE_ENV
from testbed.deployment import Deployment, in_parallel
from testbed.errors import TestbedError
from testbed.pipeline.component import read_status
from testbed.pipeline.workload import Event, Ledger
from testbed.ports import free_port
from testbed.topology import (
    INFOMART_DATABASE,
    GimSpec,
    IconSpec,
    extraction_source,
    source_name,
)
from testbed.vclock.engine_clock import EngineClock

AnyClock = Clock | EngineClock


@dataclass
class PipelineSettings:
    """Scenario-time settings of the components (seconds)."""

    rate_per_hour: float = 600.0  # events per site per scenario hour
    seed: int = 1
    extract_data_stuck_threshold: float = 28860.0
    delayed_data_threshold: float = 900.0
    heartbeat_interval: float = 60.0
    flush_after: float = 5.0


class ManagedProcess:
    """One component process. Its pid is recorded in the run, so `testbed down` finds it."""

    def __init__(
        self,
        name: str,
        module: str,
        config: dict[str, Any],
        workdir: Path,
        clock: AnyClock,
        run: RunDir | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = env or {}
        self.module = module
        self.config = config
        self.workdir = workdir
        self.clock = clock
        self.run = run
        self.config_path = workdir / "config.json"
        self.log = workdir / "process.log"
        self._proc: launcher.Launched | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def state(self) -> str:
        if self._proc is None or self._proc.poll() is not None:
            return "stopped"
        return procs.run_state(self._proc.pid)

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> ManagedProcess:
        if self.state() != "stopped":
            raise TestbedError(f"{self.name} is already {self.state()}")
        (self.workdir / "status.json").unlink(missing_ok=True)
        env = {**os.environ, **self.env, **self.clock.to_env()}
        self._proc = launcher.start(self.module, [str(self.config_path)], env, self.log)
        if self.run is not None:
            self.run.record_process(ProcessRecord(self.name, self._proc.pid, str(self.config_path)))
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            procs.stop_group(self._proc.pid, self._proc.pid, signal.SIGTERM, timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean anything up."""
        if self._proc is None:
            raise TestbedError(f"{self.name} is not running")
        procs.signal_group(self._proc.pid, signal.SIGKILL)
        self._reap()

    def pause(self) -> None:
        if self.state() != "running":
            raise TestbedError(f"{self.name} is {self.state()}, cannot pause")
        assert self._proc is not None  # running
        procs.signal_group(self._proc.pid, signal.SIGSTOP)
        if isinstance(self.clock, EngineClock):
            self.clock.coordinator.freeze(self.name)

    def resume(self) -> None:
        if self._proc is not None:
            procs.signal_group(self._proc.pid, signal.SIGCONT)
            if isinstance(self.clock, EngineClock):
                self.clock.coordinator.thaw(self.name)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """New settings, read at the next start (an operator editing the application's
        options, then restarting it)."""
        self.config = {**config, "name": self.name, "status": str(self.workdir / "status.json")}
        self.config_path.write_text(json.dumps(self.config, indent=2))

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                procs.signal_group(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        if self.run is not None:
            self.run.forget_process(self.name)

    def status(self) -> dict[str, Any] | None:
        return read_status(self.workdir / "status.json")

    def local_path(self, key: str) -> Path:
        """The file that config[key] names, readable here (it is: the process runs here)."""
        return Path(self.config[key])

    def last_log_line(self) -> str:
        return _last_line(self.log)


class Pipeline:
    def __init__(
        self,
        deployment: Deployment,
        settings: PipelineSettings | None = None,
        clock: AnyClock | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.deployment = deployment
        self.settings = settings or PipelineSettings()
        self.clock: AnyClock = clock or Clock.start()
        run = getattr(deployment.backend, "run", None)
        # Ledgers and queues are durable state like the databases: kept beside their data.
        data_root = getattr(deployment.backend, "data_root", None)
        self.workdir = workdir or (
            Path(data_root) / "pipeline" if data_root else Path(".testbed/pipeline").absolute()
        )
        self.run = run
        # A backend that runs components in containers (swarm) makes them; else OS processes.
        self.containers = getattr(deployment.backend, "component", None) is not None
        topo = deployment.topology
        self.icons: dict[str, ManagedProcess] = {}
        self.icon_ports: dict[str, int] = {}
        self.started = False
        for icon in topo.icons:
            self.icons[icon.name] = self._icon(icon)
        self.gims = {gim.name: self._gim(gim) for gim in topo.gims}
        self.sources = {
            source_name(pair.site): self._source(pair.site, [pair.a, pair.b])
            for pair in topo.icon_pairs()
        }
        # The GIMs in service, the first one's Info Mart being the reporting one. Operator
        # procedures change it (a DR activates the standby site's GIM).
        self.active_gims: list[str] = [g.name for g in topo.gims if g.active]
        # ICONs whose IDB was lost with its site: they queue, but nobody can extract what
        # they would write, so waiting for their queues to drain is waiting for ever.
        self.detached: set[str] = set()

    # --- building the processes ----------------------------------------------------------

    def _process(self, name: str, module: str, config: dict[str, Any]) -> Any:
        workdir = self.workdir / name
        config = {**config, "name": name, "status": self._path(name, "status.json")}
        if self.containers:
            backend: Any = self.deployment.backend
            return backend.component(
                name, module, config["site"], config, self.clock.to_env(), workdir
            )
        return ManagedProcess(name, module, config, workdir, self.clock, self.run, self._env())

    def _env(self) -> dict[str, str]:
        """What a component on this machine needs to authenticate: the run's password file."""
        return {PASSFILE_ENV: str(self.deployment.backend.passfile)}

    def _path(self, name: str, filename: str) -> str:
        """Where a component keeps one of its files, as the component sees it."""
        if self.containers:
            return str(self.deployment.backend.component_path(name, filename))  # type: ignore[attr-defined]
        return str(self.workdir / name / filename)

    def address_for(self, client: str, server: str) -> str:
        """Where `client` dials `server`, as the component sees it: inside the site's
        network when it runs in a container."""
        address = self.deployment.address_for(client, server)
        if self.containers:
            return str(self.deployment.backend.inside(address))  # type: ignore[attr-defined]
        return address

    def route_of(self, client: str, server: str) -> str | None:
        """The WAN link a connection crosses (`site1|site2`), None within a site: what the
        virtual clock asks the faults about when the connection blocks."""
        return self.deployment.topology.route_between(client, server)

    def proxy_of(self, client: str, server: str) -> str | None:
        """The WAN proxy `client` dials `server` through (None: none): whose held bytes
        the virtual clock lets a call wait on."""
        return self.deployment.proxy_of(client, server)

    def idb_of(self, icon: IconSpec) -> dict[str, Any]:
        """Where an ICON writes, in its config: the address, and the names the virtual clock
        asks the faults about (a re-pointed ICON changes all of them, not its address alone)."""
        return {
            "idb": self.address_for(icon.name, icon.idb),
            "idb_name": icon.idb,
            "route": self.route_of(icon.name, icon.idb),
            "via": self.proxy_of(icon.name, icon.idb),
        }

    def _icon(self, icon: IconSpec) -> Any:
        port = free_port()
        self.icon_ports[icon.name] = port
        config = {
            "site": icon.site,
            "member": icon.member,
            "port": port,
            **self.idb_of(icon),
            "database": icon.database,
            "queue": self._path(icon.name, "queue.db"),
            "heartbeat_interval": self.settings.heartbeat_interval,
            "flush_after": self.settings.flush_after,
        }
        if self.containers:
            config["listen_host"] = "0.0.0.0"  # sources dial it by name on the site network
        return self._process(icon.name, "testbed.pipeline.icon", config)

    def gim_config(
        self, gim: GimSpec, lost_idbs: frozenset[str] = frozenset(), retired: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """GIM's options: every ICON database on an IDB that still exists is a source."""
        topo = self.deployment.topology
        sources = [
            {
                # One source per ICON database: a re-pointed ICON's database on its new IDB
                # is a new source, with marks of that server's transaction ids; so is one
                # on an IDB rebuilt empty under its old name (`#2`: its second life).
                "name": extraction_source(icon, self.deployment.incarnation.get(icon.idb, 1)),
                "site": icon.site,
                "member": icon.member,
                "address": self.address_for(gim.name, icon.idb),
                "database": icon.database,
                "server": icon.idb,
                "route": self.route_of(gim.name, icon.idb),
                "via": self.proxy_of(gim.name, icon.idb),
            }
            for icon in topo.icons
            if icon.idb not in lost_idbs
        ]
        return {
            "site": gim.site,
            "sources": sources,
            "infomart": self.address_for(gim.name, gim.infomart),
            "infomart_name": gim.infomart,
            "infomart_route": self.route_of(gim.name, gim.infomart),
            "infomart_via": self.proxy_of(gim.name, gim.infomart),
            "heartbeat_interval": self.settings.heartbeat_interval,
            "database": INFOMART_DATABASE,
            "extract_data_stuck_threshold": self.settings.extract_data_stuck_threshold,
            "delayed_data_threshold": self.settings.delayed_data_threshold,
            "retired_sites": list(retired),
        }

    def _gim(self, gim: GimSpec) -> ManagedProcess:
        return self._process(gim.name, "testbed.pipeline.gim", self.gim_config(gim))

    def _source(
        self,
        site: str,
        icons: list[IconSpec],
        name: str | None = None,
        rate_per_hour: float | None = None,
        id_prefix: str | None = None,
    ) -> ManagedProcess:
        name = name or source_name(site)
        return self._process(
            name,
            "testbed.pipeline.workload",
            {
                "site": site,
                "rate_per_hour": rate_per_hour or self.settings.rate_per_hour,
                "seed": self.settings.seed,
                "id_prefix": id_prefix,
                "heartbeat_interval": self.settings.heartbeat_interval,
                "icons": [
                    {
                        "name": i.name,
                        "port": self.icon_ports[i.name],
                        "host": i.name if self.containers else "127.0.0.1",
                    }
                    for i in icons
                ],
                "ledger": self._path(name, "ledger.jsonl"),
                "deliveries": self._path(name, "deliveries.jsonl"),
            },
        )

    # --- growing the pipeline (operator procedures) ----------------------------------------

    def add_icon(self, icon: IconSpec) -> ManagedProcess:
        process = self._icon(icon)
        self.icons[icon.name] = process
        process.start()
        self.wait_ready(process)
        return process

    def add_gim(self, gim: GimSpec) -> ManagedProcess:
        process = self._gim(gim)
        self.gims[gim.name] = process
        return process

    def add_source(
        self,
        site: str,
        icons: list[IconSpec],
        name: str | None = None,
        rate_per_hour: float | None = None,
        id_prefix: str | None = None,
    ) -> ManagedProcess:
        """A data source started now; `id_prefix` for a second stream at the same site."""
        process = self._source(site, icons, name, rate_per_hour, id_prefix)
        self.sources[process.name] = process
        process.start()
        self.wait_ready(process)
        return process

    # --- control -------------------------------------------------------------------------

    @property
    def processes(self) -> dict[str, ManagedProcess]:
        return {**self.icons, **self.gims, **self.sources}

    def process(self, name: str) -> ManagedProcess:
        try:
            return self.processes[name]
        except KeyError:
            known = ", ".join(sorted(self.processes))
            raise TestbedError(f"no pipeline process '{name}' (known: {known})") from None

    def start(self) -> Pipeline:
        """ICONs first (so no event is missed), then the active GIMs, then the sources.

        Starting a started pipeline does nothing: the `testbed_pipeline` fixture hands one
        over started, and a test written from the Python example calls `start()` again.
        One component is started again through its process (`process(name).start()`)."""
        if self.started:
            return self
        self.started = True
        if self.containers:
            self.deployment.backend.wait_components()  # type: ignore[attr-defined]
        for icon in self.icons.values():
            icon.start()
        for icon in self.icons.values():
            self.wait_ready(icon)
        for spec in self.deployment.topology.gims:
            if spec.active:
                self.gims[spec.name].start()
        for source in self.sources.values():
            source.start()
        for process in self.processes.values():
            if process.state() != "stopped":
                self.wait_ready(process)
        return self

    def wait_ready(self, process: ManagedProcess, timeout: float = 15.0) -> None:
        """A component is ready once it reports (an ICON listens before its first report)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.state() == "stopped":
                raise TestbedError(f"{process.name} exited at start: {process.last_log_line()}")
            if process.status() is not None:
                return
            time.sleep(0.01)
        raise TestbedError(f"{process.name} did not report within {timeout:.0f}s")

    def close(self) -> None:
        """Sources, then GIMs, then ICONs; each group at once (a stop is mostly waiting)."""
        self.started = False
        for group in (self.sources, self.gims, self.icons):
            in_parallel([process.stop for process in group.values()])

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- figures -------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """What the scenario history samples; cheap (status files only), at any time.

        The boundary is the smallest over the GIMs in service (all of them must have caught
        up for reporting to have), None while one of them is not reporting."""
        states = {n: p.state() for n, p in self.processes.items()}
        icons = {n: p.status() or {} for n, p in self.icons.items()}
        gims = {n: p.status() or {} for n, p in self.gims.items() if states[n] != "stopped"}
        serving = [gims.get(n, {}) for n in self.active_gims]
        active = serving[0] if serving else {}
        boundaries = [g.get("transform_boundary") for g in serving]
        boundary = (
            None
            if not boundaries or None in boundaries
            else min(b for b in boundaries if b is not None)
        )
        return {
            "scenario_time": self.clock.now(),
            "queue_depth": {n: s.get("queue_depth") for n, s in icons.items()},
            "queued_events": {n: s.get("queued_events") for n, s in icons.items()},
            "oldest_queued_ts": {n: s.get("oldest_queued_ts") for n, s in icons.items()},
            "idb_connected": {n: s.get("idb_connected") for n, s in icons.items()},
            "emitted": {n: (p.status() or {}).get("emitted") for n, p in self.sources.items()},
            "transform_boundary": boundary,
            "hwm": active.get("hwm"),
            "hwm_by_gim": {n: s.get("hwm") for n, s in gims.items()},
            "active_gims": list(self.active_gims),
            "detached": sorted(self.detached),
            "stuck_sites": active.get("stuck_sites"),
            "complete_to": active.get("complete_to"),
            "states": states,
        }

    def ledger(self, site: str | None = None) -> list[Event]:
        """Every event any data source of the run emitted (of one site if given)."""
        events = [
            e
            for process in self.sources.values()
            for e in Ledger.read(process.local_path("ledger"))
        ]
        return [e for e in events if site is None or e.site == site]

    @property
    def reporting_infomart(self) -> str:
        """The Info Mart of the first GIM in service: the one reports are read from."""
        gims = {g.name: g for g in self.deployment.topology.gims}
        if self.active_gims:
            return gims[self.active_gims[0]].infomart
        return next(s.name for s in self.deployment.topology.servers if s.role == "infomart")

    def facts(self, infomart: str = "infomart1") -> list[tuple[str, str, float, str]]:
        return [
            tuple(r)
            for r in self.deployment.server(infomart).execute(
                "SELECT event_id, site, ts, source FROM fact_interaction ORDER BY interaction_key",
                dbname=INFOMART_DATABASE,
            )
        ]

    def discards(self, infomart: str = "infomart1") -> list[tuple[str, str, float]]:
        return [
            tuple(r)
            for r in self.deployment.server(infomart).execute(
                "SELECT event_id, site, ts FROM gim_discard ORDER BY ts", dbname=INFOMART_DATABASE
            )
        ]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Until `predicate(figures)` holds; a TestbedError with the figures if it never does.
        On the virtual clock the time runs while it waits, a heartbeat interval at a time
        (the figures change only at instants); `timeout` still bounds the wall time."""
        deadline = time.monotonic() + timeout
        while True:
            figures = self.figures()
            if predicate(figures):
                return figures
            if time.monotonic() >= deadline:
                raise TestbedError(f"not {what} within {timeout:.0f}s: {figures}")
            if isinstance(self.clock, EngineClock):
                self.clock.sleep(self.settings.heartbeat_interval)
            else:
                time.sleep(0.02)

    def caught_up(self, through: float) -> Callable[[dict[str, Any]], bool]:
        """Reporting has caught up to scenario time `through`: the transform boundary is past
        it and no running ICON still queues an event from before it. (Events after it may be
        queued: under a running workload the queues are never all empty at once.)"""

        def check(figures: dict[str, Any]) -> bool:
            boundary, oldest, missing = _backlog(figures)
            return (
                boundary is not None
                and boundary >= through
                and not missing
                and all(ts > through for ts in oldest)
            )

        return check

    def settle(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop the sources, then wait until everything they emitted is reported."""
        in_parallel([source.stop for source in self.sources.values()])
        last = max((e.ts for e in self.ledger()), default=0.0)
        return self.wait_for(self.caught_up(last), timeout, "settled")


def reported_before(figures: dict[str, Any]) -> float | None:
    """The scenario time reporting has caught up to (`Pipeline.caught_up` holds for any time
    before it): every event emitted earlier is reported, or discarded by the rules. None
    while a GIM in service has no transform boundary or a running ICON does not report."""
    boundary, oldest, missing = _backlog(figures)
    if boundary is None or missing:
        return None
    return float(min([boundary, *oldest]))


def _backlog(figures: dict[str, Any]) -> tuple[float | None, list[float], bool]:
    """The transform boundary, the oldest event each running ICON still queues, and whether
    one of them does not report its queue (detached ICONs do not count)."""
    counted = {n for n, state in figures["states"].items() if state == "running"} - set(
        figures["detached"]
    )
    oldest = [
        ts for n, ts in figures["oldest_queued_ts"].items() if n in counted and ts is not None
    ]
    missing = any(n in counted and s is None for n, s in figures["queued_events"].items())
    return figures["transform_boundary"], oldest, missing


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
