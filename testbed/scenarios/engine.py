"""Running a scenario: bring the topology up, run the pipeline, play the timeline of faults
at their scenario times, sample the figures, settle, and leave behind everything the
checkers need (history, ledgers, final contents) in the output folder.

The run records facts; it judges nothing. `checks.py` judges, from the folder alone, so a
report can be re-made (`testbed report DIR`) without running anything again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from testbed import launcher, ports, procs
from testbed.backends.choose import open_backend
from testbed.clock import Clock
from testbed.deployment import Deployment, bring_up
from testbed.errors import CannotRunHere, TestbedError
from testbed.history import History, of_kind, read_history
from testbed.netfault.wan import Wan
from testbed.operations.consistency import compare, divergence, marks
from testbed.operations.dr import Operator
from testbed.periods import STOP_PATIENCE_WALL_S
from testbed.pipeline.control import Pipeline, PipelineSettings
from testbed.postgres import Server, parse_lsn
from testbed.scenarios import chaos
from testbed.scenarios.blockage import Blockage
from testbed.scenarios.kept_connections import KeptConnections
from testbed.scenarios.lineage import lineage
from testbed.scenarios.replication_watch import ReplicationWatch
from testbed.scenarios.spec import DR_VERBS, Scenario, Step
from testbed.topology import INFOMART_DATABASE
from testbed.vclock.coordinator import Coordinator
from testbed.vclock.engine_clock import VIRTUAL_FACTOR, EngineClock
from testbed.verdict.tolerance import tolerance_for

LINEAGE_MAX = 200  # lost or doubled events traced hop by hop
# Scenario time 0 is this far after the clock starts, so that the components have booted
# (the pipeline's start waits for them). Every run pays what the boot does not use. Forked
# from the warm fork server (`launcher`), local components boot in about 0.12 s (0.25 s on
# a busy machine); started as new interpreters, in about 0.6 s; as containers, seconds.
FORKED_LEAD_WALL_S = 0.4
LEAD_WALL_S = {"local": 1.0}
CONTAINER_LEAD_WALL_S = 3.0
SAMPLE_WALL_S = 0.05
SAMPLE_VIRTUAL_S = 60.0  # scenario seconds between samples on the virtual clock
FINAL_SETTLE_WALL_S = 90.0
REPLAY_AGE_SQL = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"

Progress = Callable[[float, str], None]


class ScenarioRun:
    def __init__(
        self,
        scenario: Scenario,
        out: Path,
        home: str | None = None,
        seed: int | None = None,
        replay: Path | None = None,
        progress: Progress | None = None,
        backend: str = "local",
        toxiproxy_image: str | None = None,
    ) -> None:
        self.backend_name = backend
        self.toxiproxy_image = toxiproxy_image
        self.scenario = scenario
        self.out = out
        self.home = home
        self.seed = seed
        self.replay = replay
        self.progress = progress or (lambda _t, _m: None)
        self.failures: list[str] = []
        self.blockage = Blockage()
        self._sampler: Sampler | None = None

    @property
    def virtual(self) -> bool:
        return self.scenario.factor == VIRTUAL_FACTOR

    def refuse_virtual(self) -> None:
        """What the virtual clock cannot run yet, said before anything starts."""
        if not self.virtual:
            return
        if self.backend_name not in ("local", "docker"):
            raise TestbedError(
                f"{self.scenario.name}: the virtual clock runs on the local and docker backends"
                f" only; on {self.backend_name}, give the file `clock: 1h = 1s` (or run it with"
                " --clock '1h = 1s')"
            )
        if self.toxiproxy_image:
            raise TestbedError(
                f"{self.scenario.name}: a third-party WAN proxy (--toxiproxy-image) cannot"
                " join the virtual clock; give the file `clock: 1h = 1s` (or run it with"
                " --clock '1h = 1s')"
            )

    # --- the plan ------------------------------------------------------------------------

    def plan(self, history: History) -> list[Step]:
        """The concrete timeline: chaos steps expanded (or replayed) and recorded."""
        replayed = self._replayed_chaos()
        steps: list[Step] = []
        for index, step in enumerate(self.scenario.steps):
            if step.verb != "chaos":
                steps.append(step)
                continue
            if replayed is not None:
                concrete = [Step(**s) for s in replayed[index]]
            else:
                seed = self.seed if self.seed is not None else step.options.get("seed", 1)
                concrete = chaos.expand(step, self.scenario.topology, seed)
            history.record("chaos-schedule", index=index, steps=[s.to_json() for s in concrete])
            steps += concrete
        steps.sort(key=lambda s: s.at)
        return steps

    def _replayed_chaos(self) -> dict[int, list[dict[str, Any]]] | None:
        if self.replay is None:
            return None
        schedules = {
            e["index"]: e["steps"] for e in of_kind(read_history(self.replay), "chaos-schedule")
        }
        if not schedules and any(s.verb == "chaos" for s in self.scenario.steps):
            raise TestbedError(f"{self.replay} holds no chaos schedule to replay")
        return schedules

    # --- running -------------------------------------------------------------------------

    def run(self) -> Path:
        s = self.scenario
        if self.backend_name == "compose" and any(st.verb in DR_VERBS for st in s.steps):
            raise TestbedError(
                f"{s.name} uses operator procedures, which change the environment's roles for"
                " good: run it on the local or docker backend"
            )
        self.refuse_virtual()
        history = self.open_history()
        steps = self.plan(history)
        leased_before = ports.held()
        try:
            with self.environment(history, steps) as (deployment, pipeline):
                self._play(steps, deployment, pipeline, history)
                self.finish(deployment, pipeline, history)
        except TestbedError as exc:
            history.record("aborted", error=str(exc))
            raise
        finally:
            history.close()
            ports.release(sorted(ports.held() - leased_before))  # its servers are gone
        return self.out

    def open_history(self) -> History:
        """The output folder and its history, opened with the run's settings and tolerance."""
        s = self.scenario
        self.out.mkdir(parents=True, exist_ok=True)
        clock = Clock.start(factor=s.factor or 1.0, at=-self.lead * s.factor)
        tolerance = tolerance_for(
            s.factor, float(self._settings_dict().get("heartbeat_interval", 60.0))
        )
        history = History(self.out / "history.jsonl", clock)
        history.record(
            "run",
            scenario=s.name,
            source=s.source,
            factor=s.factor,
            clock="virtual" if self.virtual else "realtime",
            settings=self._settings_dict(),
            topology=s.topology_ref,
            expect=s.expect,
            detection_s=tolerance.detection,
            tolerance_s=tolerance.seconds,
            tolerance_formula=tolerance.formula(),
        )
        return history

    @contextlib.contextmanager
    def environment(
        self, history: History, steps: list[Step]
    ) -> Iterator[tuple[Deployment, Pipeline]]:
        """The topology up and the pipeline started for as long as the block lasts; then
        every process and server stopped, and what outlived them recorded (`teardown`)."""
        s = self.scenario
        # The virtual clock's folder, chosen before the WAN proxy starts: a container proxy
        # has it mounted at the same path, to join the clock.
        clock_dir = Coordinator._socket_path(self.out / "clock").parent if self.virtual else None
        backend = open_backend(
            self.backend_name,
            home=self.home,
            toxiproxy_image=self.toxiproxy_image,
            clock_dir=clock_dir,
        )
        with backend:
            refusal = getattr(backend, "refusal", None)
            added = tuple(st.value for st in steps if st.verb == "add-site")
            if refusal is not None and (reason := refusal(list(s.topology.sites), added)):
                raise CannotRunHere(f"{s.name} cannot run on this swarm: {reason}")
            launcher.prewarm()  # the components' fork server boots while the servers do
            deployment = bring_up(s.topology, backend)
            history.record("topology", servers=deployment.rows(), routes=deployment.wan_rows())
            # Scenario time starts once the servers are up, however long they took (a
            # container backend takes longer): the lead is for the pipeline to boot. On
            # the virtual clock it starts at 0, held while the pipeline boots.
            coordinator: Coordinator | None = None
            clock: Clock | EngineClock
            if clock_dir is not None:
                coordinator = Coordinator(
                    clock_dir,
                    blocked=self.blockage.blocked,
                    faults=lambda: (self.blockage.frozen, self.blockage.black_holed),
                )
                clock = EngineClock(coordinator)
                if deployment.wan is not None:  # its toxics wait in scenario time
                    self._attach_wan(deployment.wan, coordinator, s.seed)
            else:
                clock = Clock.start(factor=s.factor, at=-self.lead * s.factor)
            history.clock = clock  # type: ignore[assignment]
            with (
                contextlib.closing(coordinator) if coordinator else contextlib.nullcontext(),
                contextlib.ExitStack() as stack,
                Pipeline(deployment, PipelineSettings(**self._settings_dict()), clock) as pipeline,
            ):
                if coordinator is not None:  # a standby catching up holds the time
                    watch = ReplicationWatch(deployment, self.blockage, pipeline.route_of)
                    stack.callback(watch.close)
                    coordinator.add_probe(watch.moving)
                pipeline.start()
                history.record("pipeline-started")
                placements = getattr(backend, "placements", None)
                if placements is not None:  # swarm: the node each task runs on
                    history.record("placement", nodes=placements())
                self.operator = Operator(deployment, pipeline, history.record)
                self.operator.blocked = self.blockage.blocked
                if coordinator is not None:
                    self.operator.with_time = functools.partial(_with_time, coordinator)
                    self.operator.let_land = coordinator.run_until_released
                yield deployment, pipeline
                if self._sampler is not None:  # on the virtual clock it samples until here
                    self._sampler.stop()
                if coordinator is not None:
                    history.record("virtual-clock", **coordinator.stats())
                    if deployment.wan is not None:
                        with contextlib.suppress(Exception):  # it goes back by itself too
                            deployment.wan.client.attach_clock(None)
            pids = [p.pid for p in pipeline.processes.values() if p.pid]
        left = [p for p in pids if procs.alive(p)] + backend.leftovers()
        history.record("teardown", leftover_pids=left)

    @staticmethod
    def _attach_wan(wan: Wan, coordinator: Coordinator, seed: int) -> None:
        try:
            wan.client.attach_clock(str(coordinator.path), seed)
        except Exception as exc:
            raise TestbedError(
                f"the WAN proxy cannot run on the virtual clock: {exc}; a real Toxiproxy"
                " needs the realtime clock (`clock: 1h = 1s`)"
            ) from None

    @property
    def lead(self) -> float:
        """Wall seconds from the clock's start to scenario time 0 on this run's backend."""
        if self.backend_name == "local" and launcher.launch_mode() == "fork":
            return FORKED_LEAD_WALL_S
        return LEAD_WALL_S.get(self.backend_name, CONTAINER_LEAD_WALL_S)

    def _settings_dict(self) -> dict[str, Any]:
        s = self.scenario
        return {"rate_per_hour": s.rate_per_hour, "seed": s.seed, **s.settings}

    def _play(
        self, steps: list[Step], deployment: Deployment, pipeline: Pipeline, history: History
    ) -> None:
        sampler = self._sampler = Sampler(pipeline, deployment, history)
        if isinstance(pipeline.clock, EngineClock):
            # Sampled whenever the time runs (between steps, in a settle, in a procedure
            # that waits), on the grid of SAMPLE_VIRTUAL_S.
            pipeline.clock.coordinator.every(SAMPLE_VIRTUAL_S, sampler.sample)
            for step in steps:
                pipeline.clock.sleep_until(step.at)
                self.progress(pipeline.clock.now(), f"{step.verb} {step.value or step.options}")
                self.apply(step, deployment, pipeline, history)
            return
        sampler.start()
        try:
            for step in steps:
                pipeline.clock.sleep_until(step.at)
                self.progress(pipeline.clock.now(), f"{step.verb} {step.value or step.options}")
                self.apply(step, deployment, pipeline, history)
        finally:
            sampler.stop()

    def apply(
        self, step: Step, deployment: Deployment, pipeline: Pipeline, history: History
    ) -> None:
        """One step, now. A step that fails is recorded and added to `failures`, and the
        run goes on: the verdict says what it cost."""
        history.record("step", step=step.to_json())
        try:
            self._execute(step, deployment, pipeline, history)
            # When it took effect: a heal, a start or a resume is done only now.
            history.record("step-done", step=step.to_json())
        except (TestbedError, psycopg.Error) as exc:
            # A server refusing a procedure's statement (out of connection slots, say) is
            # the step failing, said in the verdict: not a traceback that loses the run.
            message = (str(exc).strip() or repr(exc)).splitlines()[0]
            self.failures.append(f"step {step.verb} at {step.at:.0f}s: {message}")
            history.record("step-failed", step=step.to_json(), error=message)

    def _execute(
        self, step: Step, deployment: Deployment, pipeline: Pipeline, history: History
    ) -> None:
        wan = deployment.wan
        recorded = len(wan.history) if wan is not None else 0
        verb, value, options = step.verb, step.value, step.options
        if verb in ("partition", "heal", "latency", "bandwidth", "toxic"):
            if wan is None:
                raise TestbedError("this topology has no WAN")
            self._wan_step(wan, verb, value, options)
            if verb == "partition":
                self.blockage.partition(value[0], value[1], options.get("mode", "reset"))
            elif verb == "heal":
                self.blockage.heal(*(() if value == "all" else value))
        elif verb in ("kill", "stop", "start", "pause", "resume"):
            target = options.get("target", value)
            self._process_fault(verb, target, deployment, pipeline)
            self.blockage.process_fault(verb, self._parts(target, deployment, pipeline))
        elif verb == "settle":
            self._settle(step, pipeline, history)
        elif verb in DR_VERBS:
            self._procedure(verb, value, options)
            if verb == "fail-site":
                self.blockage.process_fault("kill", self._parts(value, deployment, pipeline))
        for fault in wan.history[recorded:] if wan is not None else []:
            history.record("fault", **dataclasses.asdict(fault))

    @staticmethod
    def _parts(target: str, deployment: Deployment, pipeline: Pipeline) -> list[str]:
        """The servers and components a process fault on `target` acts on."""
        if target in deployment.topology.sites:
            servers = [s.name for s in deployment.topology.servers_at(target)]
            return servers + [
                p.name for p in pipeline.processes.values() if p.config["site"] == target
            ]
        return [target]

    @staticmethod
    def _wan_step(wan: Wan, verb: str, value: Any, options: dict[str, Any]) -> None:
        if verb == "partition":
            wan.partition(
                value[0],
                value[1],
                mode=options.get("mode", "reset"),
                direction=options.get("direction"),
            )
        elif verb == "heal":
            wan.heal() if value == "all" else wan.heal(value[0], value[1])
        elif verb == "latency":
            a, b = options.get("link", value)
            wan.degrade(
                a,
                b,
                latency=int(options.get("ms", value if isinstance(value, int) else 0)),
                jitter=int(options.get("jitter", 0)),
            )
        elif verb == "bandwidth":
            a, b = options.get("link", value)
            wan.degrade(a, b, bandwidth=int(options["rate"]))
        elif verb == "toxic":
            a, b = options.get("link", value)
            stream = options.get("stream")
            wan.toxic(
                a,
                b,
                options["type"],
                stream=None if stream in (None, "both") else stream,
                toxicity=float(options.get("toxicity", 1.0)),
                **{k: int(v) for k, v in (options.get("attributes") or {}).items()},
            )

    def _procedure(self, verb: str, value: Any, options: dict[str, Any]) -> None:
        force = bool(options.get("force", False))
        op = self.operator
        if verb == "fail-site":
            op.fail_site(value)
        elif verb == "promote":
            op.promote(value, force=force)
        elif verb == "activate-gim":
            op.activate_gim(value, force=force)
        elif verb == "add-site":
            op.add_site(value, replaces=options.get("replaces"))
        elif verb == "recover-site":
            op.recover_site(value, disks=options.get("disks", "kept"))
        elif verb == "transfer":
            op.transfer(
                value["from"],
                value["to"],
                gim=value.get("gim", "running"),
                method=value.get("method", "basebackup"),
            )
        elif verb == "switchover":
            op.switchover(value)

    def _process_fault(
        self, verb: str, target: str, deployment: Deployment, pipeline: Pipeline
    ) -> None:
        topo = deployment.topology
        if target in topo.sites:
            processes = [p for p in pipeline.processes.values() if p.config["site"] == target]
            servers = [deployment.server(s.name) for s in topo.servers_at(target)]
            if verb == "start":
                for server in servers:
                    if server.state() == "stopped":
                        server.start()
                started = []
                for process in processes:
                    if process.state() == "stopped" and self._should_run(process.name, pipeline):
                        started.append(process.start())
                for process in started:
                    pipeline.wait_ready(process)
                return
            for process in processes:
                if process.state() != "stopped" or verb == "resume":
                    getattr(process, verb)()
            for server in servers:
                if server.state() != "stopped" or verb == "resume":
                    self._server_fault(verb, server)
            return
        if target in deployment.servers:
            server = deployment.server(target)
            if verb == "start" and server.state() != "stopped":
                return
            self._server_fault(verb, server)
            return
        process = pipeline.process(target)
        if verb == "start" and process.state() != "stopped":
            return
        getattr(process, verb)()
        if verb == "start":
            pipeline.wait_ready(process)  # in effect once it reports, not when forked

    @staticmethod
    def _server_fault(verb: str, server: Server) -> None:
        if verb == "stop":
            # A clean stop, unless it hangs (a walsender waiting on a standby behind a
            # black hole): then an immediate one, never scenario hours late.
            server.stop(patience=STOP_PATIENCE_WALL_S)
        else:
            getattr(server, verb)()

    @staticmethod
    def _should_run(name: str, pipeline: Pipeline) -> bool:
        return name not in pipeline.gims or name in pipeline.active_gims

    def _settle(self, step: Step, pipeline: Pipeline, history: History) -> None:
        target = pipeline.clock.now()
        if isinstance(pipeline.clock, EngineClock):
            self._settle_virtual(step, pipeline, history, pipeline.clock)
            return
        limit = pipeline.clock.wall_seconds(float(step.value))
        try:
            pipeline.wait_for(pipeline.caught_up(target), limit, "caught up")
            history.record("settled", through=target)
        except TestbedError:
            self.failures.append(
                f"settle at {step.at:.0f}s: reporting did not catch up within {step.value:.0f}s"
            )
            history.record("settle-timeout", through=target, limit=step.value)

    def _settle_virtual(
        self, step: Step, pipeline: Pipeline, history: History, clock: EngineClock
    ) -> None:
        """Let the time run until reporting has caught up, for at most the step's span of
        scenario time, a heartbeat interval at a time (sampled as the time runs)."""
        target = clock.now()
        caught_up = pipeline.caught_up(target)
        figures = pipeline.figures()
        while not caught_up(figures):
            if clock.now() - target >= float(step.value):
                self.failures.append(
                    f"settle at {step.at:.0f}s: reporting did not catch up within {step.value:.0f}s"
                )
                history.record("settle-timeout", through=target, limit=step.value)
                return
            clock.sleep(
                min(pipeline.settings.heartbeat_interval, target + step.value - clock.now())
            )
            figures = pipeline.figures()
        history.record("settled", through=target)

    def finish(self, deployment: Deployment, pipeline: Pipeline, history: History) -> None:
        wan = deployment.wan
        residue = wan.residue() if wan is not None else []
        history.record("residue", wan=residue)
        if residue and wan is not None:
            wan.heal()  # cleanup, so the final settle can measure what was lost, not stuck
            history.record("cleanup-heal")
        resumed = []
        for process in pipeline.processes.values():  # a scenario may end with one frozen
            if process.state() == "paused":
                process.resume()
                resumed.append(process.name)
        for name, server in deployment.servers.items():
            if server.state() == "paused":
                server.resume()
                resumed.append(name)
        if resumed:
            history.record("cleanup-resume", names=resumed)
        try:
            figures = pipeline.settle(FINAL_SETTLE_WALL_S)
            history.record("final-settle", figures=figures)
        except TestbedError as exc:
            self.failures.append(f"final settle: {exc}")
            history.record("final-settle-timeout", error=str(exc)[:2000])
        self._save_contents(deployment, pipeline, history)

    def _save_contents(self, deployment: Deployment, pipeline: Pipeline, history: History) -> None:
        # The writers stop first: a replica is compared at a pinned LSN that must not move.
        for name in pipeline.active_gims:
            pipeline.gims[name].stop()
        contents = self.write_contents(self.out, deployment, pipeline)
        history.record("contents-saved", facts=len(contents["facts"]))

    def write_contents(
        self,
        out: Path,
        deployment: Deployment,
        pipeline: Pipeline,
        before: float | None = None,
    ) -> dict[str, Any]:
        """What the checks read besides the history: `ledger.jsonl` and `final.json` in `out`.

        With `before`, a verdict so far on a run that goes on: only the events emitted
        before that scenario time and their facts, and no replica or marks compared, since
        neither holds still while GIM writes."""
        infomart = pipeline.reporting_infomart
        events = [e for e in pipeline.ledger() if before is None or e.ts < before]
        judged = {e.id for e in events}

        def of_judged(rows: list[Any]) -> list[Any]:
            return rows if before is None else [row for row in rows if row[0] in judged]

        with open(out / "ledger.jsonl", "w", encoding="utf-8") as ledger:
            for event in events:  # vars(): the same fields as asdict(), a copy costs more
                ledger.write(json.dumps(vars(event)) + "\n")
        server = deployment.server(infomart)
        sites = server.execute(
            "SELECT site, discard_before, discarded, returned_at FROM gim_site",
            dbname=INFOMART_DATABASE,
        )
        facts = of_judged(pipeline.facts(infomart))
        counts = collections.Counter(row[0] for row in facts)
        suspects = [e for e in events if counts[e.id] != 1][:LINEAGE_MAX]
        gims = {g.name: g for g in deployment.topology.gims}
        others = {  # a doubled event stays doubled: the duplicates check counts them
            gims[name].infomart: sorted(
                row[0] for row in of_judged(pipeline.facts(gims[name].infomart))
            )
            for name in pipeline.active_gims[1:]
            if gims[name].infomart != infomart
        }
        contents: dict[str, Any] = {
            "lineage": lineage(deployment, pipeline, infomart, suspects),
            "infomart": infomart,
            "facts": facts,
            "discards": pipeline.discards(infomart),
            "sites": [list(r) for r in sites],
            "other_infomarts": others,  # event ids each other Info Mart in service holds
            "replica": self._replica(deployment) if before is None else None,
            "failures": self.failures,
            # Each fact's content, to compare with its ledger event.
            "fact_contents": of_judged(
                server.execute(
                    "SELECT event_id, site, ts, payload FROM fact_interaction",
                    dbname=INFOMART_DATABASE,
                )
            ),
        }
        if before is None:
            contents["marks"] = marks(deployment, infomart)
        contents["leftover"] = self._leftover(deployment, pipeline, infomart)
        (out / "final.json").write_text(json.dumps(contents))
        return contents

    def _leftover(
        self, deployment: Deployment, pipeline: Pipeline, infomart: str
    ) -> dict[str, Any]:
        """What the final settle left behind: events still queued in a running ICON, rows
        still staged, sites still stuck."""
        figures = pipeline.figures()
        queued = {
            name: n
            for name, n in (figures.get("queued_events") or {}).items()
            if n and name not in pipeline.detached and figures["states"].get(name) == "running"
        }
        server = deployment.server(infomart)
        staged = dict(
            server.execute(
                "SELECT site, count(*) FROM staging GROUP BY site", dbname=INFOMART_DATABASE
            )
        )
        stuck = [
            r[0]
            for r in server.execute(
                "SELECT site FROM gim_site WHERE stuck ORDER BY site", dbname=INFOMART_DATABASE
            )
        ]
        return {"queued_events": queued, "staged": staged, "stuck": stuck}

    def _replica(self, deployment: Deployment) -> dict[str, Any] | None:
        """Every standby against its primary, and every split (two primaries) analysed."""
        pairs = [
            compare(deployment.server(primary), deployment.server(standby))
            for standby, primary in sorted(deployment.standby_of.items())
            if deployment.server(primary).state() == "running"
            and deployment.server(standby).state() == "running"
        ]
        splits = [
            divergence(deployment.server(old), deployment.server(new))
            for new, old in sorted(deployment.promoted_from.items())
            if deployment.server(old).state() == "running"
            and deployment.server(new).state() == "running"
        ]
        if not pairs and not splits:
            return None
        return {"pairs": pairs, "divergence": splits}


def _with_time(coordinator: Coordinator, work: Callable[[], Any], proxy: str | None) -> Any:
    """A procedure's work across the WAN (a base backup, a catch-up) with the time
    running: it holds the time while it works, and lets it jump only while the WAN proxy
    holds its bytes (a slow link takes scenario time, the same on any machine)."""
    return coordinator.run_while(work, lambda held: proxy is None or proxy not in held)


class Sampler(threading.Thread):
    """Samples the pipeline's figures into the history while the timeline plays."""

    def __init__(self, pipeline: Pipeline, deployment: Deployment, history: History) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pipeline = pipeline
        self.deployment = deployment
        self.history = history
        self._halt = threading.Event()
        self._conns = KeptConnections(deployment, "testbed-sampler")

        self.count = 0

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_WALL_S):
            self.sample()

    def sample(self) -> None:
        """One sample of the figures (the replication lag every tenth)."""
        if self._halt.is_set():
            return
        self.count += 1
        try:
            figures = self.pipeline.figures()
            if self.count % 10 == 0:
                lag, seconds = self._replication_lag()
                figures["replication_lag_bytes"] = lag
                figures["replication_lag_s"] = seconds
            self.history.record("sample", **figures)
        except Exception as exc:  # a sample is best effort; the run goes on
            self.history.record("sample-failed", error=str(exc)[:200])

    def _replication_lag(self) -> tuple[dict[str, int | None], dict[str, float | None]]:
        """Per standby: bytes of WAL it has yet to replay, and how old (wall seconds) the
        newest transaction it replayed is while it is behind (None: it cannot be asked)."""
        lag: dict[str, int | None] = {}
        seconds: dict[str, float | None] = {}
        for standby, primary_name in list(self.deployment.standby_of.items()):
            try:
                (primary,) = self._conns.row(primary_name, "SELECT pg_current_wal_lsn()::text")
                (replayed,) = self._conns.row(standby, "SELECT pg_last_wal_replay_lsn()::text")
                behind = parse_lsn(primary) - parse_lsn(replayed) if replayed else None
                lag[standby] = max(0, behind) if behind is not None else None
                seconds[standby] = (
                    0.0 if lag[standby] == 0 else self._conns.row(standby, REPLAY_AGE_SQL)[0]
                )
            except Exception:  # a server down or cut off: no figure, not a failure
                lag[standby] = seconds[standby] = None
        return lag, seconds

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)
        self._conns.close()
