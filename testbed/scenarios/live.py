"""A scenario run driven one step at a time from outside (a Chaos Toolkit experiment): the
same bring-up, steps, history, final contents and reports as a scenario file's run, with
the timeline decided as it goes instead of written up front.

Between steps the run goes on in scenario time, sampled as the engine samples it. `judge`
gives the verdict so far with the engine's reference model and checks, on the events that
reporting has caught up with: a later event may still be on its way (queued behind a cut
WAN), so it is not lost yet. `close` ends the run as a scenario ends (the WAN healed, frozen
parts resumed, a final settle), stops every process and server, writes the reports, and is
safe to call again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path
from typing import Any

from testbed.clock import Clock
from testbed.deployment import Deployment
from testbed.errors import TestbedError
from testbed.history import History
from testbed.pipeline.control import Pipeline, reported_before
from testbed.scenarios.engine import SAMPLE_VIRTUAL_S, Sampler, ScenarioRun
from testbed.scenarios.spec import Scenario, Step, parse_step
from testbed.vclock.engine_clock import EngineClock
from testbed.verdict.checks import Outcome, evaluate
from testbed.verdict.report import write_reports

# Checks a run can pass only once it has ended: nothing may be left behind before that.
ENDED_RUN_CHECKS = ("residue",)
SO_FAR = "so-far"  # the folder, inside the run's, of the latest verdict so far
NOT_LIVE = ("chaos", "wait")  # a random timeline is written up front; waiting is `wait`
REPORTING_WALL_S = 30.0  # from the pipeline's start to GIM's first transform boundary


class LiveRun:
    def __init__(
        self, scenario: Scenario, out: Path, home: str | None = None, backend: str = "local"
    ) -> None:
        self.scenario = scenario
        self.out = out
        self.engine = ScenarioRun(scenario, out, home=home, backend=backend)
        self.outcome: Outcome | None = None  # the final verdict, once closed
        self._stack = contextlib.ExitStack()
        self._history: History | None = None
        self._sampler: Sampler | None = None
        self._deployment: Deployment | None = None
        self._pipeline: Pipeline | None = None
        self._judging = threading.Lock()
        self._judged_before: float | None = None
        self._closing = threading.Lock()
        self._closed = False

    # --- life --------------------------------------------------------------------------

    def start(self) -> LiveRun:
        """Servers, WAN and pipeline up; returns at scenario time 0 (as a scenario starts) or
        later, once GIM reports."""
        self.engine.refuse_virtual()
        history = self._history = self.engine.open_history()
        try:
            self._deployment, self._pipeline = self._stack.enter_context(
                self.engine.environment(history, [])
            )
            # The backend's run: what `testbed down` takes, should this process be killed.
            history.record("live-run", run=self._deployment.backend.id)
            self._sampler = Sampler(self._pipeline, self._deployment, history)
            clock = self._pipeline.clock
            if isinstance(clock, EngineClock):
                # Sampled whenever the time runs (in `wait`, a settle, a procedure), on
                # the grid the engine samples a scenario file's run on.
                clock.coordinator.every(SAMPLE_VIRTUAL_S, self._sampler.sample)
            else:
                self._sampler.start()
            self._pipeline.clock.sleep_until(0.0)  # the lead: the components boot first
            # And reporting has begun, so that a verdict at once has events to judge.
            self._pipeline.wait_for(
                lambda figures: reported_before(figures) is not None,
                REPORTING_WALL_S,
                "reporting",
            )
        except BaseException as exc:
            self._closed = True
            try:
                if self._sampler is not None:
                    self._sampler.stop()
                self._stack.close()
            finally:
                if isinstance(exc, TestbedError):
                    history.record("aborted", error=str(exc))
                history.close()
            raise
        return self

    def close(self, finish: bool = True) -> Outcome | None:
        """End the run: with `finish`, as a scenario ends (WAN healed, everything resumed,
        a final settle, the contents saved, the reports written: the final verdict is
        returned); without, stop at once (an interrupted experiment). Either way every
        process and server stops."""
        with self._closing:
            if self._closed:
                return self.outcome
            self._closed = True
            history = self._history
            if history is None:  # never started
                return None
            try:
                try:
                    if self._sampler is not None:
                        self._sampler.stop()
                    if finish:
                        self.engine.finish(self.deployment, self.pipeline, history)
                finally:
                    self._stack.close()
            except TestbedError as exc:
                history.record("aborted", error=str(exc))
                raise
            finally:
                history.close()
            if finish:
                self.outcome = write_reports(self.out)
            return self.outcome

    @property
    def running(self) -> bool:
        return self._pipeline is not None and not self._closed

    @property
    def deployment(self) -> Deployment:
        if self._deployment is None:
            raise TestbedError("the run has not started")
        return self._deployment

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise TestbedError("the run has not started")
        return self._pipeline

    @property
    def clock(self) -> Clock | EngineClock:
        """The run's scenario time. On the virtual clock it moves only while an activity
        lets it (`wait`, a settle, a procedure's own waits): between activities the run
        is held at one instant, however long the experiment takes to call the next."""
        return self.pipeline.clock

    def describe(self) -> dict[str, Any]:
        """Where everything is: the run's folder, servers and WAN routes, scenario time."""
        backend = self.deployment.backend
        return {
            "run": backend.id,
            "out": str(self.out),
            "scenario_time": self.clock.now(),
            "servers": self.deployment.rows(),
            "routes": self.deployment.wan_rows(),
        }

    # --- the timeline ------------------------------------------------------------------

    def step(self, raw: dict[str, Any]) -> Step:
        """Check one step, written as in a scenario file without `at`
        (`{"partition": ["site1", "site2"], "mode": "blackhole"}`), and apply it now.
        A step that fails is recorded as the engine records it, then raised."""
        if not self.running:
            raise TestbedError("the run is not running")
        deployment, pipeline = self.deployment, self.pipeline
        verb = next((key for key in raw if key in NOT_LIVE), None)
        if verb is not None:
            raise TestbedError(f"'{verb}' is not a step of a run driven step by step")
        parsed = parse_step(
            {"at": 0, **raw}, deployment.topology, sorted(deployment.failed_sites), "step"
        )
        step = dataclasses.replace(parsed, at=max(0.0, self.clock.now()))
        failures = len(self.engine.failures)
        assert self._history is not None  # running
        self.engine.apply(step, deployment, pipeline, self._history)
        if len(self.engine.failures) > failures:
            raise TestbedError(self.engine.failures[-1])
        return step

    def wait(self, seconds: float) -> float:
        """Let `seconds` of scenario time pass; the scenario time it is then."""
        self.clock.sleep(seconds)
        return self.clock.now()

    # --- the verdict so far ------------------------------------------------------------

    def judge(self) -> Outcome:
        """The engine's checks on what has happened so far, judged from a copy of the
        history and the contents of every event that reporting has caught up with (its
        figure `judged_before`). The checks only an ended run can pass are left to the
        final verdict; the folder `so-far` keeps the latest judgement's inputs."""
        with self._judging:
            if not self.running:
                raise TestbedError("the run is not running")
            # While no GIM reports (one killed, say), what reporting had caught up with.
            before = reported_before(self.pipeline.figures())
            before = self._judged_before = before if before is not None else self._judged_before
            folder = self.out / SO_FAR
            folder.mkdir(exist_ok=True)
            text = (self.out / "history.jsonl").read_text(encoding="utf-8")
            # Up to the last whole line: the history is being appended to meanwhile.
            (folder / "history.jsonl").write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
            contents = self.engine.write_contents(
                folder,
                self.deployment,
                self.pipeline,
                before=before if before is not None else float("-inf"),
            )
            outcome = evaluate(folder)
        checks = [c for c in outcome.checks if c.name not in ENDED_RUN_CHECKS]
        figures = {
            **outcome.figures,
            "judged_before": before,
            "judged_facts": len(contents["facts"]),
        }
        return Outcome(outcome.scenario, all(c.passed for c in checks), checks, figures)
