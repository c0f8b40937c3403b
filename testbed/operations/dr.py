"""The operator's procedures of a business-continuity deployment: losing a site, promoting
the standby Info Mart, bringing GIM into service at the other site, adding a replacement
site, transferring the Info Mart over the WAN, and a planned switchover.

Each procedure checks its precondition first and refuses with the reason (`Refused`, exit
code 1) unless forced; a forced override is recorded. Each records what it did, with its
figures, through `record` (the scenario history), so the checkers can explain the outcome.

The guard that matters most is the documented one: never bring the standby site into
service while the active site still runs. During a WAN outage the standby cannot reach the
primary, but the primary is not gone: promoting then gives two Info Marts that both take
writes (split brain). `promote` therefore refuses while the primary answers *or* still runs
(not fenced); only a failed or stopped primary lets it through.

At the moment a site fails, `fail_site` takes a census of where that site's events still
exist (the surviving IDBs, the surviving Info Mart as far as it had replayed). Whatever is
in neither is gone for good: that set is the exact loss the run must end with.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from testbed.deployment import Deployment
from testbed.errors import Refused, ServerFailed, TestbedError
from testbed.netfault.wan import Traffic
from testbed.pipeline.control import Pipeline
from testbed.pipeline.pqueue import queued_events, remove_queue
from testbed.postgres import Server, format_lsn, split_address
from testbed.topology import (
    INFOMART_DATABASE,
    GimSpec,
    ServerSpec,
    Topology,
    proxy_name,
    source_name,
    topology_to_dict,
    with_replacement_site,
)

Record = Callable[..., Any]
# Runs `work` (which moves bytes through the WAN proxy named, None: none) and returns its result.
WithTime = Callable[[Callable[[], Any], str | None], Any]
REACH_TIMEOUT_S = 2  # libpq's smallest useful connect timeout
QUIET_TIMEOUT_S = 10.0  # statements of the dead site still finishing on surviving servers
REWOUND_START_S = 20.0  # a rewound server replays from the common checkpoint, then answers


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def statements_under_way(server: Server, clients: list[str]) -> int:
    """How many statements of these clients (application names) the server is still
    running. A walsender is none: one streaming to a standby of the dead site stays
    "active" until its replication timeout (a minute, behind a black hole), and waiting
    for it held every such failure for the whole quiet timeout."""
    return int(
        server.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)"
            " AND state <> 'idle' AND backend_type = 'client backend'",
            (clients,),
        )
    )


class Operator:
    def __init__(
        self, deployment: Deployment, pipeline: Pipeline | None = None, record: Record | None = None
    ) -> None:
        self.deployment = deployment
        self.pipeline = pipeline
        self.record = record or (lambda _kind, **_fields: None)
        self._transfers = 0
        self._lost_at_failure: dict[str, set[str]] = {}  # per failed site: its census's loss
        # How work that moves bytes across the WAN runs: as it is on the realtime clock;
        # on the virtual clock the engine lets the time run meanwhile (a slow link then
        # takes scenario time), given the proxy the bytes go through.
        self.with_time: WithTime = lambda work, _proxy: work()
        # Until the WAN proxy holds no bytes of these proxies: on the virtual clock the
        # engine lets the time run to their release; on the realtime clock they land anyway.
        self.let_land: Callable[[frozenset[str]], None] = lambda _proxies: None
        # What the faults in force block (target, WAN link), as the engine applied them: a
        # probe that could only wait out its timeout behind them is not sent.
        self.blocked: Callable[[str, str | None], bool] = lambda _target, _route: False

    # --- shared ---------------------------------------------------------------------------

    @property
    def topology(self) -> Topology:
        return self.deployment.topology

    def _guard(self, procedure: str, site: str, reason: str | None, force: bool) -> bool:
        """Refuse (raise) when `reason` is set, unless forced; True when forced past it."""
        if reason is None:
            return False
        if force:
            self.record("dr-forced", procedure=procedure, site=site, overridden=reason)
            return True
        self.record("dr-refused", procedure=procedure, site=site, reason=reason)
        raise Refused(f"{procedure} {site} refused: {reason}")

    def _scenario_now(self) -> float:
        return self.pipeline.clock.now() if self.pipeline is not None else 0.0

    def _check_site(self, site: str) -> None:
        if site not in self.topology.sites:
            raise TestbedError(f"unknown site '{site}' (sites: {', '.join(self.topology.sites)})")

    def _infomart_at(self, site: str) -> ServerSpec:
        found = [s for s in self.topology.servers_at(site) if s.role == "infomart"]
        if not found:
            raise TestbedError(f"site {site} has no Info Mart")
        return found[0]

    def _gim_at(self, site: str) -> GimSpec:
        found = [g for g in self.topology.gims if g.site == site]
        if not found:
            raise TestbedError(f"site {site} has no GIM")
        return found[0]

    def _need_pipeline(self, procedure: str) -> Pipeline:
        if self.pipeline is None:
            raise Refused(
                f"{procedure} needs the pipeline (ICONs, GIMs, data sources), which "
                "`testbed up` does not run; use it as a scenario step"
            )
        return self.pipeline

    def _lost_idbs(self) -> frozenset[str]:
        return frozenset(
            s.name
            for s in self.topology.servers
            if s.role == "idb" and s.site in self.deployment.failed_sites
        )

    def _reachable(self, client: str, server: str) -> bool:
        # A black hole, a frozen server: no answer comes.
        if self.blocked(server, self.topology.route_between(client, server)):
            return False
        host, port = split_address(self.deployment.address_for(client, server))
        try:
            dsn = self.deployment.server(server).conninfo(connect_timeout=REACH_TIMEOUT_S)
            with psycopg.connect(dsn, host=host, port=port) as conn:  # where `client` dials
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    # --- fail-site ------------------------------------------------------------------------

    def fail_site(self, site: str) -> dict[str, Any]:
        """Every component of `site` dies at once; its calls move to a surviving site.
        Nothing to force: failing a failed site, or the last one, has no meaning."""
        self._check_site(site)
        failed = self.deployment.failed_sites
        if site in failed:
            self._guard("fail-site", site, f"{site} has failed already", force=False)
        survivors = [s for s in self.topology.sites if s != site and s not in failed]
        if not survivors:
            raise Refused(f"fail-site {site} refused: it is the last site standing")
        killed: list[str] = []
        pipeline = self.pipeline
        if pipeline is not None:
            order = [*pipeline.icons.values(), *pipeline.sources.values(), *pipeline.gims.values()]
            for process in order:
                if process.config["site"] == site and process.state() != "stopped":
                    process.kill()
                    killed.append(process.name)
        for spec in self.topology.servers_at(site):
            server = self.deployment.server(spec.name)
            if server.state() != "stopped":
                server.kill()
                killed.append(spec.name)
        failed.add(site)
        facts: dict[str, Any] = {"procedure": "fail-site", "site": site, "killed": killed}
        if pipeline is not None:
            lost_idbs = self._lost_idbs()
            pipeline.detached |= {i.name for i in self.topology.icons if i.idb in lost_idbs}
            gims_there = {g.name for g in self.topology.gims if g.site == site}
            pipeline.active_gims = [g for g in pipeline.active_gims if g not in gims_there]
            facts["census"] = self._census(site, killed)
            self._lost_at_failure[site] = set(facts["census"]["lost"])
            facts["takeover"] = self._take_over_calls(site, survivors[0])
        self.record("dr", **facts)
        return facts

    def _census(self, site: str, killed: list[str]) -> dict[str, Any]:
        """Where each of the lost site's events still exists, right after the failure."""
        pipeline = self.pipeline
        assert pipeline is not None
        surviving = [
            s
            for s in self.topology.servers
            if s.site not in self.deployment.failed_sites
            and self.deployment.server(s.name).state() == "running"
        ]
        # A statement the dead site sent just before dying, or WAL its primary streamed, is
        # on the WAN still: it lands (a toxic's bytes at their release), then commits.
        self.let_land(self._proxies_of(killed))
        self._wait_quiet(surviving, killed)
        ledger = pipeline.ledger(site)
        in_idbs: set[str] = set()
        for icon in self.topology.icons:
            idb = next((s for s in surviving if s.name == icon.idb), None)
            if icon.site != site or idb is None:
                continue
            rows = self.deployment.server(idb.name).execute(
                "SELECT event_id FROM events", dbname=icon.database
            )
            in_idbs |= {r[0] for r in rows}
        in_infomarts: set[str] = set()
        for spec in (s for s in surviving if s.role == "infomart"):
            server = self.deployment.server(spec.name)
            self._wait_replayed(server)
            rows = server.execute(
                "SELECT event_id FROM fact_interaction UNION SELECT event_id FROM staging",
                dbname=INFOMART_DATABASE,
            )
            in_infomarts |= {r[0] for r in rows}
        lost = sorted(e.id for e in ledger if e.id not in in_idbs and e.id not in in_infomarts)
        return {
            "site": site,
            "events": len(ledger),
            "last_ts": max((e.ts for e in ledger), default=0.0),
            "in_surviving_idbs": sum(1 for e in ledger if e.id in in_idbs),
            "only_in_surviving_infomart": sum(
                1 for e in ledger if e.id in in_infomarts and e.id not in in_idbs
            ),
            "lost_without_infomart": sum(1 for e in ledger if e.id not in in_idbs),
            "lost": lost,
        }

    def _proxies_of(self, names: list[str]) -> frozenset[str]:
        """The WAN proxies with one of these components or servers at either end."""
        routes = self.deployment.route_addresses or {}
        return frozenset(
            proxy_name(client, server)
            for client, server in routes
            if client in names or server in names
        )

    def _wait_quiet(self, surviving: list[ServerSpec], killed: list[str]) -> None:
        """A statement the dead site sent just before dying still commits: wait for it."""
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        for spec in surviving:
            server = self.deployment.server(spec.name)
            while time.monotonic() < deadline:
                if not statements_under_way(server, killed):
                    break
                time.sleep(0.01)

    @staticmethod
    def _wait_replayed(server: Server, timeout: float = QUIET_TIMEOUT_S) -> None:
        """A standby whose primary died replays what it received, then stands still."""
        if not server.is_in_recovery():
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received, replayed = server.lsn("receive"), server.lsn("replay")
            if received is None or (replayed is not None and replayed >= received):
                return
            time.sleep(0.01)

    def _take_over_calls(self, site: str, survivor: str) -> dict[str, Any] | None:
        """Calls of the lost site are routed to a surviving one: a second stream of events
        there, at the lost site's rate, through the survivor's ICON pair."""
        pipeline = self.pipeline
        assert pipeline is not None
        pair = next((p for p in self.topology.icon_pairs() if p.site == survivor), None)
        lost_source = pipeline.sources.get(source_name(site))
        if pair is None or lost_source is None:
            return None
        name = f"{source_name(survivor)}_takeover"
        if name in pipeline.sources:
            return None
        rate = float(lost_source.config["rate_per_hour"])
        pipeline.add_source(survivor, [pair.a, pair.b], name, rate, f"{survivor}t")
        return {"source": name, "site": survivor, "rate_per_hour": rate}

    # --- promote --------------------------------------------------------------------------

    def _primary_not_fenced(self, standby: str, primary: str) -> str | None:
        spec = self.topology.server(primary)
        state = self.deployment.server(primary).state()
        if state == "stopped":
            return None
        if self._reachable(standby, primary):
            return (
                f"{primary}, the primary at {spec.site}, is {state} and answers from"
                f" {self.topology.server(standby).site}; promoting {standby} would give two"
                f" Info Marts that both take writes (split brain). Fail or fence {spec.site}"
                " first, or force it"
            )
        return (
            f"{primary} at {spec.site} does not answer over the WAN but still runs (not"
            " fenced): this is a network outage, not a disaster. GIM must not be brought into"
            f" service at {self.topology.server(standby).site} during an outage; fence"
            f" {spec.site} first, or force it"
        )

    def promote(self, site: str, force: bool = False) -> dict[str, Any]:
        """Stop replication into `site`'s Info Mart and make it a primary."""
        self._check_site(site)
        spec = self._infomart_at(site)
        primary = self.deployment.standby_of.get(spec.name)
        if primary is None:
            raise Refused(f"promote {site} refused: {spec.name} is not a standby")
        standby = self.deployment.server(spec.name)
        if standby.state() != "running":
            raise Refused(f"promote {site} refused: {spec.name} is {standby.state()}")
        forced = self._guard("promote", site, self._primary_not_fenced(spec.name, primary), force)
        replayed = standby.lsn("replay")
        started = time.monotonic()
        standby.promote()
        del self.deployment.standby_of[spec.name]
        # The old primary's timeline is left behind, whatever becomes of it: should it come
        # back on its disks, it must not take writes again until rebuilt (`recover-site`).
        self.deployment.superseded[primary] = spec.name
        if self.deployment.server(primary).state() != "stopped":
            self.deployment.promoted_from[spec.name] = primary
        facts = {
            "procedure": "promote",
            "site": site,
            "server": spec.name,
            "former_primary": primary,
            "replayed_lsn": format_lsn(replayed or 0),
            "forced": forced,
            "wall_s": round(time.monotonic() - started, 3),
        }
        self.record("dr", **facts)
        return facts

    # --- activate-gim ---------------------------------------------------------------------

    def activate_gim(self, site: str, force: bool = False) -> dict[str, Any]:
        """GIM at `site` into service against the IDBs that still exist, continuing from
        the state in its Info Mart (replicated from the old primary)."""
        self._check_site(site)
        pipeline = self._need_pipeline("activate-gim")
        gim = self._gim_at(site)
        infomart = self.deployment.server(gim.infomart)
        if infomart.state() != "running":
            raise Refused(f"activate-gim {site} refused: {gim.infomart} is {infomart.state()}")
        if infomart.is_in_recovery():
            raise Refused(
                f"activate-gim {site} refused: {gim.infomart} is still a standby of"
                f" {self.deployment.standby_of.get(gim.infomart)}; promote {site} first"
            )
        others = [
            g
            for g in pipeline.active_gims
            if g != gim.name and pipeline.gims[g].state() != "stopped"
        ]
        reason = None
        if self.topology.mode == "active-standby" and others:
            reason = (
                f"{', '.join(others)} still in service: two GIMs loading two Info Marts is"
                " split brain; fail or stop it first, or force it"
            )
        left_behind = self.deployment.superseded.get(gim.infomart)
        if reason is None and left_behind is not None:
            reason = (
                f"{gim.infomart} is on the timeline {left_behind} left when it was promoted:"
                f" loading it again makes two Info Marts that each took writes (the"
                f" dual-active hazard); rebuild it first (transfer from"
                f" {self.topology.server(left_behind).site} to {site}), or force it"
            )
        forced = self._guard("activate-gim", site, reason, force)
        if forced and left_behind is not None:
            # Reported as the split it is: the report compares the two Info Marts.
            self.deployment.promoted_from.setdefault(left_behind, gim.infomart)
        self._start_gim(gim)
        facts = {
            "procedure": "activate-gim",
            "site": site,
            "gim": gim.name,
            "infomart": gim.infomart,
            "sources": [s["name"] for s in pipeline.gims[gim.name].config["sources"]],
            "retired_sites": sorted(self.deployment.failed_sites),
            "forced": forced,
            "dual_active_hazard": forced and left_behind is not None,
        }
        self.record("dr", **facts)
        return facts

    def _start_gim(self, gim: GimSpec) -> None:
        """(Re)start `gim` with the sources that exist now; it leads the GIMs in service."""
        pipeline = self.pipeline
        assert pipeline is not None
        process = pipeline.gims.get(gim.name) or pipeline.add_gim(gim)
        if process.state() != "stopped":
            process.stop()
        process.reconfigure(
            pipeline.gim_config(gim, self._lost_idbs(), tuple(sorted(self.deployment.failed_sites)))
        )
        process.start()
        pipeline.active_gims = [gim.name, *(g for g in pipeline.active_gims if g != gim.name)]

    def _restart_active_gims(self) -> None:
        """After the sources changed (a site added), GIMs in service re-read them."""
        pipeline = self.pipeline
        assert pipeline is not None
        specs = {g.name: g for g in self.topology.gims}
        for name in reversed(list(pipeline.active_gims)):
            if pipeline.gims[name].state() != "stopped":
                self._start_gim(specs[name])

    # --- add-site -------------------------------------------------------------------------

    def add_site(self, site: str, replaces: str | None = None) -> dict[str, Any]:
        """A replacement for a lost site: its IDB, an empty Info Mart, its ICON pair, and
        the surviving sites' member b re-pointed to the new IDB; its calls come back to it."""
        failed = sorted(self.deployment.failed_sites)
        replaces = replaces or (failed[0] if len(failed) == 1 else None)
        if replaces is None:
            raise Refused(
                f"add-site {site} refused: say which failed site it replaces (failed: "
                f"{', '.join(failed) or 'none'})"
            )
        if replaces not in failed:
            raise Refused(f"add-site {site} refused: {replaces} has not failed")
        if site in self.topology.sites:
            raise Refused(
                f"add-site {site} refused: {site} exists already; a replacement site takes a"
                " new name (for example site3)"
            )
        old = self.topology
        new = with_replacement_site(old, site, replaces)
        backend = self.deployment.backend
        started = time.monotonic()
        existing = {s.name for s in old.servers}
        for spec in new.servers:
            if spec.name not in existing:
                server = (
                    backend.new_server(spec.name, spec.site, spec.role, spec.port).init().start()
                )
                for database in spec.databases:
                    server.create_database(database)
            else:
                before = set(old.server(spec.name).databases)
                for database in spec.databases:
                    if database not in before:
                        self.deployment.server(spec.name).create_database(database)
        self.deployment.topology = new
        self.deployment.replaced_by[replaces] = site
        for route in new.cross_site_routes():
            if {route.client_site, route.server_site} & self.deployment.failed_sites:
                continue
            self.deployment.ensure_route(route.client, route.server, route.purpose)
        self.record("topology-changed", topology=topology_to_dict(new))
        facts: dict[str, Any] = {
            "procedure": "add-site",
            "site": site,
            "replaces": replaces,
            "servers": [s.name for s in new.servers_at(site)],
        }
        if self.pipeline is not None:
            facts.update(self._grow_pipeline(old, site))
        facts["wall_s"] = round(time.monotonic() - started, 3)
        self.record("dr", **facts)
        return facts

    def _grow_pipeline(self, old: Topology, site: str) -> dict[str, Any]:
        pipeline = self.pipeline
        assert pipeline is not None
        new = self.topology
        before = {i.name: i for i in old.icons}
        repointed = []
        for icon in new.icons:
            if icon.name in before and before[icon.name].idb != icon.idb:
                process = pipeline.icons[icon.name]
                process.reconfigure({**process.config, **pipeline.idb_of(icon)})
                process.restart()  # its queue is on disk: it drains into the new IDB
                pipeline.detached.discard(icon.name)
                repointed.append(icon.name)
        pair = next(p for p in new.icon_pairs() if p.site == site)
        for icon in (pair.a, pair.b):
            pipeline.add_icon(icon)
        for gim in new.gims:
            if gim.name not in pipeline.gims:
                pipeline.add_gim(gim)
        stopped = self._stop_takeover()
        pipeline.add_source(site, [pair.a, pair.b])
        self._restart_active_gims()
        return {"repointed": repointed, "takeover_stopped": stopped}

    # --- recover-site ---------------------------------------------------------------------

    def recover_site(self, site: str, disks: str = "kept") -> dict[str, Any]:
        """The lost `site` comes back. On its old disks (`kept`): its servers restart on
        their data, its ICONs replay what their queues still hold, and an Info Mart that a
        promotion left behind stays out of service until rebuilt. Without them (`lost`): a
        replacement under its old name, every server and queue empty."""
        self._check_site(site)
        if disks not in ("kept", "lost"):
            raise TestbedError(f"recover-site: disks are 'kept' or 'lost', not {disks!r}")
        if site not in self.deployment.failed_sites:
            raise Refused(f"recover-site {site} refused: {site} has not failed")
        if site in self.deployment.replaced_by:
            raise Refused(
                f"recover-site {site} refused: {self.deployment.replaced_by[site]} replaced it"
                " already; its partners write to the replacement's IDB now"
            )
        started = time.monotonic()
        specs = self.topology.servers_at(site)
        # Read before anything restarts: the queues as the disaster left them.
        queued = self._queued_at(site) if disks == "kept" else set()
        for spec in specs:
            if disks == "lost":
                self._rebuild_empty(spec)
            else:
                self.deployment.server(spec.name).start()
        in_idbs = self._in_own_idbs(site) if disks == "kept" and self.pipeline else set()
        self.deployment.failed_sites.discard(site)
        facts: dict[str, Any] = {
            "procedure": "recover-site",
            "site": site,
            "disks": disks,
            "servers": [s.name for s in specs],
            "left_behind": {
                old: new
                for old, new in self.deployment.superseded.items()
                if any(s.name == old for s in specs)
            },
        }
        if self.pipeline is not None:
            # What the census counted lost that the old disks still hold: it may come back
            # (the verdict calls it recovered); the rest of the census stands.
            lost = self._lost_at_failure.get(site, set())
            facts["held"] = {
                "icon_queues": len(queued & lost),
                "idbs": len(in_idbs & lost),
                "events": sorted((queued | in_idbs) & lost),
            }
            facts.update(self._restore_pipeline(site, disks))
        facts["wall_s"] = round(time.monotonic() - started, 3)
        self.record("dr", **facts)
        return facts

    def _rebuild_empty(self, spec: ServerSpec) -> None:
        """A server of a site back on new disks: empty, a new life under its old name (a
        new source for GIM), no standby of anything, on no old timeline."""
        server = self.deployment.server(spec.name)
        server.node.wipe()
        server.init().start()
        for database in spec.databases:
            server.create_database(database)
        self.deployment.incarnation[spec.name] = self.deployment.incarnation.get(spec.name, 1) + 1
        self.deployment.standby_of.pop(spec.name, None)
        self.deployment.superseded.pop(spec.name, None)

    def _queued_at(self, site: str) -> set[str]:
        """Events the site's ICON queues still hold (ICONs and queues as the loss left them)."""
        pipeline = self.pipeline
        if pipeline is None:
            return set()
        return {
            event_id
            for icon in self.topology.icons
            if icon.site == site and icon.name in pipeline.icons
            for event_id in queued_events(pipeline.icons[icon.name].local_path("queue"))
        }

    def _in_own_idbs(self, site: str) -> set[str]:
        """Events of the site's ICONs in its own IDBs, restarted on their old data."""
        idbs = {s.name for s in self.topology.servers_at(site) if s.role == "idb"}
        found: set[str] = set()
        for icon in self.topology.icons:
            if icon.site == site and icon.idb in idbs:
                try:
                    rows = self.deployment.server(icon.idb).execute(
                        "SELECT event_id FROM events", dbname=icon.database
                    )
                except psycopg.errors.UndefinedTable:
                    continue  # its ICON never wrote there
                found |= {r[0] for r in rows}
        return found

    def _restore_pipeline(self, site: str, disks: str) -> dict[str, Any]:
        """The site's ICONs and calls come back, its IDBs are sources again, and the calls
        its partner took over return to it. Its GIM stays out of service (`activate-gim`)."""
        pipeline = self.pipeline
        assert pipeline is not None
        topo = self.topology
        icons = [i for i in topo.icons if i.site == site]
        if disks == "lost":
            for icon in icons:
                remove_queue(pipeline.icons[icon.name].local_path("queue"))
        for icon in icons:
            if pipeline.icons[icon.name].state() == "stopped":
                pipeline.icons[icon.name].start()
        for icon in icons:
            pipeline.wait_ready(pipeline.icons[icon.name])
        idbs = {s.name for s in topo.servers_at(site) if s.role == "idb"}
        reattached = sorted(i.name for i in topo.icons if i.idb in idbs and i.site != site)
        pipeline.detached -= set(reattached)
        stopped = self._stop_takeover()
        source = pipeline.sources[source_name(site)]
        if source.state() == "stopped":
            config = {k: v for k, v in source.config.items() if k not in ("name", "status")}
            if disks == "lost":  # its ICONs hold nothing of before: they vouch from now on
                source.reconfigure({**config, "vouch_anew": [i.name for i in icons]})
            source.start()
            pipeline.wait_ready(source)
            source.reconfigure(config)
        self._restart_active_gims()
        return {"reattached": reattached, "takeover_stopped": stopped}

    def _stop_takeover(self) -> list[str]:
        """The calls a surviving site took over go back: its takeover sources stop."""
        pipeline = self.pipeline
        assert pipeline is not None
        stopped = [n for n in pipeline.sources if n.endswith("_takeover")]
        for name in stopped:
            pipeline.sources[name].stop()
        return stopped

    # --- transfer -------------------------------------------------------------------------

    def transfer(
        self, source_site: str, target_site: str, gim: str = "running", method: str = "basebackup"
    ) -> dict[str, Any]:
        """Copy the Info Mart of `source_site` to `target_site` over the WAN, then stream:
        what GIM loaded meanwhile (if it kept running) is caught up. `basebackup` copies it
        all; `rewind` (pg_rewind) copies only what changed since the target, an old primary
        that `source_site`'s promotion left behind, forked from it."""
        self._check_site(source_site)
        self._check_site(target_site)
        if gim not in ("running", "stopped"):
            raise TestbedError(f"transfer: gim is 'running' or 'stopped', not {gim!r}")
        if method not in ("basebackup", "rewind"):
            raise TestbedError(f"transfer: method is 'basebackup' or 'rewind', not {method!r}")
        src_spec, dst_spec = self._infomart_at(source_site), self._infomart_at(target_site)
        src, dst = self.deployment.server(src_spec.name), self.deployment.server(dst_spec.name)
        why = None
        if src.state() != "running" or src.is_in_recovery():
            why = f"{src.name} is not a running primary"
        elif self.deployment.standby_of.get(dst.name) == src.name:
            why = f"{dst.name} is a standby of {src.name} already"
        elif self.pipeline is not None and any(
            g.infomart == dst.name and g.name in self.pipeline.active_gims
            for g in self.topology.gims
        ):
            why = f"{dst.name} is loaded by a GIM in service; it cannot be overwritten"
        elif method == "rewind" and self.deployment.superseded.get(dst.name) != src.name:
            why = (
                f"{dst.name} is not an old primary that {src.name}'s promotion left behind:"
                " pg_rewind has no fork to go back to; copy it with a base backup"
            )
        if why:
            raise Refused(f"transfer to {target_site} refused: {why}")
        paused = []
        if gim == "stopped" and self.pipeline is not None:
            for g in self.topology.gims:
                process = self.pipeline.gims.get(g.name)
                if g.infomart == src.name and process is not None and process.state() == "running":
                    process.stop()
                    paused.append(g.name)
        via = self.deployment.ensure_route(dst.name, src.name, "replication")
        self._transfers += 1
        name = f"transfer-{self._transfers}-to-{dst.name}"
        wan = self.deployment.wan
        crosses = wan is not None and src_spec.site != dst_spec.site
        traffic_before = wan.traffic() if wan is not None and crosses else None
        lsn_before = src.current_lsn()
        proxy = self.deployment.proxy_of(dst.name, src.name)
        started, scenario_started = time.monotonic(), self._scenario_now()
        rewind_failed = None
        size = None  # rewound: what it copied is what crossed the WAN (`wan_bytes`)
        if method == "rewind":
            try:
                self.with_time(lambda: self._rewind(dst, src, via), proxy)
            except ServerFailed as exc:
                # The WAL back to the last common checkpoint is gone from both: the
                # timeline no longer allows a rewind. A base backup does it instead.
                rewind_failed = str(exc)
                if dst.state() != "stopped":
                    dst.kill()
        if method == "basebackup" or rewind_failed:
            path = self.with_time(lambda: src.backup(name, via=via), proxy)
            size = _tree_bytes(path) or None  # none on our disk: taken by the server itself
            # Started with the time running, and part of the copy: a standby starting up
            # streams what it still needs through the WAN proxy, at the link's pace (on
            # docker the container takes the whole base backup itself as it first starts).
            self.with_time(lambda: dst.rebuild_from(src, name, via=via).start(), proxy)
            self._remove_backup(path)
        copy_s = time.monotonic() - started
        copy_scenario = self._scenario_now() - scenario_started
        over_wan = (
            self._wan_share(
                f"{dst.name}-to-{src.name}", src_spec.site, dst_spec.site, copy_s, traffic_before
            )
            if traffic_before is not None
            else {}
        )
        if over_wan.get("wan_bytes") and copy_scenario > 0:  # the rate a scenario sees
            over_wan["scenario_rate_kb_s"] = round(over_wan["wan_bytes"] / copy_scenario / 1e3, 2)
        lsn_after = src.current_lsn()
        self.deployment.standby_of[dst.name] = src.name
        self.deployment.superseded.pop(dst.name, None)  # rebuilt: on src's timeline now
        caught_from = time.monotonic()
        target = src.current_lsn()
        self.with_time(lambda: src.wait_for_catchup(dst, target_lsn=target, timeout=120), proxy)
        catch_up_s = time.monotonic() - caught_from
        specs = {g.name: g for g in self.topology.gims}
        for name in paused:
            self._start_gim(specs[name])
        facts = {
            "procedure": "transfer",
            "from": source_site,
            "to": target_site,
            "gim": gim,
            "method": "basebackup" if rewind_failed else method,
            "rewind_failed": rewind_failed,
            "bytes": size,
            "copy_wall_s": round(copy_s, 3),
            "rate_mb_s": round(size / copy_s / 1e6, 2) if copy_s and size else None,
            "rate_basis": "backup size on disk",
            **over_wan,
            "wal_during_copy_bytes": lsn_after - lsn_before,
            "catch_up_bytes": max(0, target - lsn_after),
            "catch_up_wall_s": round(catch_up_s, 3),
            "total_wall_s": round(time.monotonic() - started, 3),
            # In scenario time: on the virtual clock a slow link's copy takes its bytes over
            # its rate (the planner's arithmetic); on the realtime clock, wall time scaled.
            "copy_scenario_s": round(copy_scenario, 3),
            "total_scenario_s": round(self._scenario_now() - scenario_started, 3),
            "gim_stopped": paused,
        }
        self.record("dr", **facts)
        return facts

    @staticmethod
    def _rewind(dst: Server, src: Server, via: str) -> None:
        """pg_rewind, then start as `src`'s standby: it must reach a consistent state from
        the WAL it has (a rewound server that waits for WAL no one has never will)."""
        dst.rewind_from(src, via=via)
        dst.start(timeout=REWOUND_START_S)

    def _wan_share(
        self, proxy: str, source_site: str, target_site: str, copy_s: float, before: Traffic
    ) -> dict[str, Any]:
        """What the copy sent across the WAN and what else shared the link meanwhile.

        The rate is the bytes on the wire over the copy's time: a backup's size on disk
        is no measure of it (WAL segments are padded to their full size)."""
        assert self.deployment.wan is not None
        wan = self.deployment.wan
        moved = wan.traffic().since(before)
        copied = moved.proxies.get((proxy, "downstream"))
        if copied is None or not copy_s:
            return {}
        way = f"{source_site}->{target_site}"
        link_total = moved.links.get(way)
        others = (
            sum(moved.proxies.get(pair, 0) for pair in wan.streams_from(source_site, target_site))
            - copied
        )
        facts: dict[str, Any] = {
            "wan_bytes": copied,
            "rate_mb_s": round(copied / copy_s / 1e6, 2),
            "rate_basis": "bytes through the WAN proxy",
            "link_rate_kb_s": wan.link_rate(source_site, target_site),
            "link_other_bytes": max(0, others),
        }
        if link_total is not None:
            facts["link_mb_s"] = round(link_total / copy_s / 1e6, 2)
        return facts

    @staticmethod
    def _remove_backup(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    # --- switchover -----------------------------------------------------------------------

    def switchover(self, site: str) -> dict[str, Any]:
        """Planned role change with no loss: GIM stops, the standby at `site` catches up and
        is promoted, the old primary follows it, and GIM starts at `site`."""
        self._check_site(site)
        new_spec = self._infomart_at(site)
        old_name = self.deployment.standby_of.get(new_spec.name)
        if old_name is None:
            raise Refused(
                f"switchover to {site} refused: {new_spec.name} is not a standby; transfer the"
                f" Info Mart to {site} first"
            )
        new, old = self.deployment.server(new_spec.name), self.deployment.server(old_name)
        if old.state() != "running" or not new.streaming():
            raise Refused(
                f"switchover to {site} refused: {new.name} is not streaming from {old.name};"
                " a switchover without loss needs both up and connected"
            )
        started = time.monotonic()
        stopped = []
        if self.pipeline is not None:
            for name in list(self.pipeline.active_gims):
                if self.pipeline.gims[name].state() != "stopped":
                    self.pipeline.gims[name].stop()
                    stopped.append(name)
        final = old.lsn("flush")
        old.wait_for_catchup(new, target_lsn=final, timeout=60)
        old.stop()  # clean: its shutdown checkpoint reaches the standby before it exits
        new.promote()
        del self.deployment.standby_of[new.name]
        via = self.deployment.ensure_route(old.name, new.name, "replication")
        method = self._rejoin(old, new, via)
        self.deployment.standby_of[old.name] = new.name
        if self.pipeline is not None:
            self.pipeline.active_gims = []
            self._start_gim(self._gim_at(site))
        facts = {
            "procedure": "switchover",
            "site": site,
            "new_primary": new.name,
            "new_standby": old.name,
            "final_lsn": format_lsn(final or 0),
            "rejoined_by": method,
            "gims_stopped": stopped,
            "wall_s": round(time.monotonic() - started, 3),
        }
        self.record("dr", **facts)
        return facts

    def _rejoin(self, old: Server, new: Server, via: str) -> str:
        """The old primary follows the new one as it is, or from a fresh base backup when
        its WAL went past the fork (it cannot, after a clean switchover, but we check)."""
        old.follow(new, via=via).start()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if old.streaming():
                new.wait_for_catchup(old, timeout=30)
                return "follow"
            time.sleep(0.05)
        self._transfers += 1
        name = f"rejoin-{self._transfers}-{old.name}"
        path = new.backup(name, via=via)
        old.rebuild_from(new, name, via=via).start()
        self._remove_backup(path)
        new.wait_for_catchup(old, timeout=60)
        return "base backup"
