"""pytest support for users' own chaos tests (registered through the `pytest11` entry point).

- Fixtures: a running topology (`testbed_deployment`), its WAN (`testbed_wan`), the
  pipeline on it (`testbed_pipeline`), the scenario clock (`testbed_clock`), and
  `run_scenario(name_or_path)` returning the checked outcome.
- Scenario files in a `scenarios/` folder are collected as tests (`pytest scenarios/`); a
  failure shows the failed checks, the chaos seed and where the report is; the figures are
  attached to the JUnit XML as properties.
- Options: `--testbed-backend`, `--testbed-clock` (`virtual` or `1h = 1s`, instead of each
  file's own), `--chaos-seed`, `--testbed-reports DIR` (each scenario file's run folder
  under DIR, to keep as a CI artifact), `--testbed-jobs N` (scenario files on virtual time
  run N at a time, ahead of their turn: `scenarios/ahead.py`).

Every fixture is a context manager underneath: a failing or interrupted test still stops
every server and process it started.
"""

from __future__ import annotations

import itertools
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.backends.choose import BACKENDS, open_backend
from testbed.clock import Clock
from testbed.credentials import ENV as PASSFILE_ENV
from testbed.deployment import Deployment, bring_up
from testbed.netfault.wan import Wan
from testbed.operations.dr import Operator
from testbed.pipeline.control import Pipeline, PipelineSettings
from testbed.scenarios.ahead import RunAhead
from testbed.scenarios.batch import Job
from testbed.topology import Topology, default_topology
from testbed.vclock.engine_clock import VIRTUAL_FACTOR
from testbed.verdict.checks import Outcome


def pytest_configure(config: pytest.Config) -> None:
    """A session stopped with SIGTERM (a CI job cancelled, `timeout`) tears its fixtures
    down as Ctrl-C does, so their servers stop; a handler someone else set is kept. So
    does SIGINT when the session was started in the background of a shell script, which
    leaves SIGINT ignored (as `testbed run` does: `procs.stop_on_signals`)."""
    _jobs(config)  # a bad value is a usage error before anything runs
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testbed", "bc-testbed")
    group.addoption(
        "--testbed-backend",
        default="local",
        choices=list(BACKENDS),
        help="where PostgreSQL runs (default: local processes; docker: containers)",
    )
    group.addoption(
        "--testbed-clock",
        default=None,
        help="`virtual` or a realtime clock such as `1h = 1s`, instead of each scenario's own"
        " (realtime for the swarm and compose backends)",
    )
    group.addoption(
        "--testbed-reports",
        metavar="DIR",
        default=None,
        help="write each scenario file's run folder (report.html, report.json, history) to"
        " DIR/<scenario>, to keep as a CI artifact (default: pytest's temporary folder)",
    )
    group.addoption(
        "--testbed-jobs",
        default="1",
        help="run scenario files on virtual time this many at a time (`auto`: one per core,"
        " up to 4); files on the realtime clock, and the tests around them, run alone",
    )
    group.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help="seed for every chaos step (default: each scenario's own)",
    )


@pytest.fixture(scope="session")
def testbed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this test session's runs live."""
    return tmp_path_factory.mktemp("testbed-home")


@pytest.fixture
def testbed_backend(request: pytest.FixtureRequest, testbed_home: Path) -> Iterator[Any]:
    """An empty run on the chosen backend: make servers with `new_server(name).init().start()`.

    Every server requires the run's password; for the test's duration `PGPASSFILE` names
    the run's password file, so a plain libpq connection from the test authenticates."""
    with (
        open_backend(request.config.getoption("--testbed-backend"), home=testbed_home) as backend,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv(PASSFILE_ENV, str(backend.passfile))
        yield backend


@pytest.fixture
def testbed_topology() -> Topology:
    """The topology `testbed_deployment` starts; override it to test another one."""
    return default_topology()


@pytest.fixture
def testbed_deployment(testbed_backend: Any, testbed_topology: Topology) -> Deployment:
    """The topology running on real servers, stopped after the test."""
    return bring_up(testbed_topology, testbed_backend)


@pytest.fixture
def testbed_wan(testbed_deployment: Deployment) -> Wan:
    """The WAN between the sites: `partition`, `heal`, `degrade`, `toxic`, `residue`."""
    assert testbed_deployment.wan is not None, "this topology has no WAN"
    return testbed_deployment.wan


@pytest.fixture
def testbed_operator(testbed_deployment: Deployment) -> Operator:
    """The operator's procedures (fail-site, promote, transfer, switchover, ...) on the
    deployment's servers; `Operator(deployment, pipeline)` adds the pipeline's part."""
    return Operator(testbed_deployment)


@pytest.fixture
def testbed_clock() -> Clock:
    """Scenario time for the pipeline (1 scenario hour per wall second)."""
    return Clock.start()


@pytest.fixture
def testbed_pipeline(testbed_deployment: Deployment, testbed_clock: Clock) -> Iterator[Pipeline]:
    """Sources, ICONs and GIM running on the deployment; stopped after the test."""
    with Pipeline(testbed_deployment, PipelineSettings(), testbed_clock) as pipeline:
        yield pipeline.start()


@pytest.fixture
def run_scenario(
    request: pytest.FixtureRequest, tmp_path: Path, testbed_home: Path
) -> Callable[..., Outcome]:
    """Run a scenario (catalog name or file) and return its checked outcome. Each call of
    one test writes its reports to a folder of its own, so two runs can be compared."""
    calls = 0

    def run(
        name_or_path: str | Path,
        seed: int | None = None,
        backend: str | None = None,
        clock: str | None = None,
    ) -> Outcome:
        nonlocal calls
        calls += 1
        return _run(
            name_or_path,
            tmp_path / ("report" if calls == 1 else f"report-{calls}"),
            testbed_home,
            seed if seed is not None else request.config.getoption("--chaos-seed"),
            request.node.user_properties,
            backend or request.config.getoption("--testbed-backend"),
            clock or request.config.getoption("--testbed-clock"),
        )

    return run


def _run(
    name_or_path: str | Path,
    out: Path,
    home: Path,
    seed: int | None,
    properties: list[tuple[str, object]],
    backend: str = "local",
    clock: str | None = None,
) -> Outcome:
    from testbed.scenarios.engine import ScenarioRun
    from testbed.scenarios.spec import load_scenario
    from testbed.verdict.report import write_reports

    scenario = load_scenario(str(name_or_path), clock)
    ScenarioRun(scenario, out, home=str(home), seed=seed, backend=backend).run()
    return _record(write_reports(out), out, properties)


def _record(outcome: Outcome, out: Path, properties: list[tuple[str, object]]) -> Outcome:
    """The figures of a run, as properties of its test in the JUnit XML."""
    for key in ("lost_events", "predicted_lost_events", "duplicates", "rto_s", "rpo_s"):
        properties.append((key, outcome.figures[key]))
    properties.append(("report", str(out / "report.html")))
    return outcome


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and file_path.parent.name == "scenarios":
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(trylast=True)  # after deselection (-k, -m): only what will run is looked at
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With run-ahead jobs, the files of one folder that may run ahead go first, those that
    must run alone (realtime) after them: run ahead only within a contiguous block, files
    interleaved by name ran as blocks of one or two, one at a time."""
    if _jobs(config) <= 1:
        return
    reordered: list[pytest.Item] = []
    for _, run in itertools.groupby(items, key=_scenario_folder):
        reordered += sorted(run, key=lambda item: not _ahead(item))  # stable: else as they were
    items[:] = reordered


def _scenario_folder(item: pytest.Item) -> Path | None:
    return item.path.parent if isinstance(item, ScenarioItem) else None


def _ahead(item: pytest.Item) -> bool:
    return isinstance(item, ScenarioItem) and item._may_run_ahead()


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        yield ScenarioItem.from_parent(self, name=self.path.stem)


class ScenarioFailed(Exception):
    def __init__(self, outcome: Outcome, out: Path, seed: int | None) -> None:
        super().__init__(outcome.scenario)
        self.outcome, self.out, self.seed = outcome, out, seed


RUN_AHEAD = pytest.StashKey["RunAhead[ScenarioItem] | None"]()
MAX_AHEAD = 4


def _jobs(config: pytest.Config) -> int:
    value = str(config.getoption("--testbed-jobs"))
    if value == "auto":
        from testbed.scenarios.batch import default_parallel

        return default_parallel(MAX_AHEAD)
    try:
        jobs = int(value)
    except ValueError:
        raise pytest.UsageError(f"--testbed-jobs {value}: a number, or auto") from None
    if jobs < 1:
        raise pytest.UsageError(f"--testbed-jobs {value}: at least 1")
    return jobs


def pytest_sessionfinish(session: pytest.Session) -> None:
    ahead = session.config.stash.get(RUN_AHEAD, None)
    if ahead is not None:
        ahead.close()


class ScenarioItem(pytest.Item):
    """One scenario file run as a test: passes when every check of its outcome passes."""

    def runtest(self) -> None:
        seed = self.config.getoption("--chaos-seed")
        ahead = self._ahead()
        job = self._job() if ahead is not None else None
        if ahead is not None and job is not None:
            result = ahead.result(self, self._block)
            if isinstance(result, BaseException):
                raise result
            out = job.out
            outcome = _record(result, out, self.user_properties)
        else:
            out = self._out()
            home = self.config._tmp_path_factory.getbasetemp() / "testbed-home"  # type: ignore[attr-defined]
            backend = self.config.getoption("--testbed-backend")
            clock = self.config.getoption("--testbed-clock")
            outcome = _run(self.path, out, home, seed, self.user_properties, backend, clock)
        if not outcome.passed:
            raise ScenarioFailed(outcome, out, seed)

    def _ahead(self) -> RunAhead[ScenarioItem] | None:
        """The session's runner of scenario files ahead of their turn (None: one at a time)."""
        stash = self.config.stash
        if RUN_AHEAD not in stash:
            jobs = _jobs(self.config)
            stash[RUN_AHEAD] = RunAhead(jobs) if jobs > 1 else None
        return stash[RUN_AHEAD]

    def _may_run_ahead(self) -> bool:
        """Whether this file may run ahead of its turn: on virtual time, on a backend that
        keeps it (a realtime file, or one that does not load, runs alone)."""
        if not hasattr(self, "_ahead_ok"):
            from testbed.scenarios.spec import load_scenario

            backend = self.config.getoption("--testbed-backend")
            clock = self.config.getoption("--testbed-clock")
            try:
                scenario = load_scenario(str(self.path), clock)
            except Exception:  # a bad file is reported by its own run, alone
                scenario = None
            self._ahead_ok = (
                scenario is not None
                and backend in ("local", "docker")
                and scenario.factor == VIRTUAL_FACTOR
            )
        return self._ahead_ok

    def _job(self) -> Job | None:
        """This file as a job to run ahead, or None if it must run alone. Made once it is
        asked for (when a block starts): its run folder is made with it."""
        if not hasattr(self, "_ahead_job"):
            job = None
            if self._may_run_ahead():
                home = self.config._tmp_path_factory.getbasetemp() / "testbed-home"  # type: ignore[attr-defined]
                seed = self.config.getoption("--chaos-seed")
                backend = self.config.getoption("--testbed-backend")
                clock = self.config.getoption("--testbed-clock")
                options = {"home": str(home), "seed": seed, "backend": backend}
                job = Job(self.name, str(self.path), clock, self._out(), options)
            self._ahead_job = job
        return self._ahead_job

    def _block(self) -> list[tuple[ScenarioItem, Job]]:
        """This item and the scenario items right after it that may run ahead."""
        items = self.session.items
        block: list[tuple[ScenarioItem, Job]] = []
        for item in items[items.index(self) :]:
            if not isinstance(item, ScenarioItem) or (job := item._job()) is None:
                break
            block.append((item, job))
        return block

    def _out(self) -> Path:
        """A new folder for this run: under --testbed-reports, named after the scenario
        (`-2`, `-3` when it is run again into the same folder: nothing is overwritten)."""
        keep = self.config.getoption("--testbed-reports")
        if keep is None:
            return self.config._tmp_path_factory.mktemp(f"scenario-{self.name}")  # type: ignore[attr-defined]
        Path(keep).mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            out = Path(keep) / (self.name if attempt == 1 else f"{self.name}-{attempt}")
            try:
                out.mkdir()
                return out
            except FileExistsError:
                continue
        raise pytest.UsageError(f"--testbed-reports {keep}: too many runs of {self.name}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ScenarioFailed):
            failed = excinfo.value
            lines = [
                f"scenario {failed.outcome.scenario} failed"
                f" (chaos seed: {failed.seed if failed.seed is not None else 'from the file'};"
                f" report: {failed.out / 'report.html'})"
            ]
            lines += [f"  {c.name}: {c.message}" for c in failed.outcome.checks if not c.passed]
            return "\n".join(lines)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario: {self.name}"
