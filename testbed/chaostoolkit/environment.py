"""The testbed environment an experiment runs against: one at a time per `chaos run`.

Chaos Toolkit calls every activity as a plain function in one Python process, so the
running environment (servers, WAN, pipeline, scenario clock, history) is module state here,
from its start (the control, or the `start_environment` action) to its stop. Every
activity reaches it through `current()`. The control stops it when the experiment ends,
whatever happened; should the process exit with it still running (an experiment that
started it as an action and declared no control), it is stopped at exit.

Activities report a problem the user can act on (an unknown site, a refused procedure, no
environment) as one line: `user_errors` turns the testbed's errors into Chaos Toolkit's
`ActivityFailed`, without the testbed's own traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from chaoslib.exceptions import ActivityFailed, InterruptExecution

from testbed.clock import parse_duration
from testbed.errors import TestbedError
from testbed.scenarios.live import LiveRun
from testbed.scenarios.spec import Scenario, scenario_from_data

P = ParamSpec("P")
R = TypeVar("R")

REPORTS = Path(".testbed/reports")  # as `testbed run`: under the working directory
SOURCE = "testbed environment"  # how errors in the environment's settings name it
SLUG_MAX = 40

_lock = threading.Lock()
_running: LiveRun | None = None


def user_errors(func: Callable[P, R]) -> Callable[P, R]:
    """A testbed error fails the activity with its one line, not a traceback.

    And a SIGTERM ends the experiment even while an activity waits: Chaos Toolkit's
    handler raises `InterruptExecution` wherever the process is, and its Python provider
    would take that for one failed activity and play the next."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except TestbedError as exc:
            raise ActivityFailed(f"testbed: {exc}") from None
        except InterruptExecution as exc:
            raise SystemExit(str(exc)) from None

    return wrapper


def scenario_for(
    name: str,
    topology: str = "active-standby",
    clock: str | float = "1h = 1s",
    rate: str | float = "600/h",
    seed: int = 1,
    settings: dict[str, Any] | None = None,
) -> Scenario:
    """The environment's settings, checked as a scenario file's are (the clock too fast to
    judge, an unknown topology or setting: one line naming the field)."""
    data: dict[str, Any] = {
        "name": name,
        "topology": topology,
        "clock": clock,
        "workload": {"rate": rate, "seed": seed},
    }
    if settings:
        data["settings"] = settings
    return scenario_from_data(data, SOURCE)


def start(
    scenario: Scenario,
    backend: str = "local",
    out: str | Path | None = None,
    home: str | None = None,
) -> LiveRun:
    """Bring the environment up; it runs until `stop`. Its run folder (history, reports)
    is `out`, by default `.testbed/reports/<name>-<time>` as for `testbed run`."""
    global _running
    folder = (
        Path(out) if out else REPORTS / f"{_slug(scenario.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    with _lock:
        if _running is not None:
            raise TestbedError(
                f"an environment is already running (its folder: {_running.out}); stop it first"
            )
        _running = LiveRun(scenario, folder.absolute(), home=home, backend=backend)
        try:
            _running.start()
        except BaseException:
            _running = None
            raise
        return _running


def current() -> LiveRun:
    """The running environment, for an activity to act on or look at."""
    run = _running
    if run is None or not run.running:
        raise TestbedError(
            "no testbed environment is running: declare the control"
            " testbed.chaostoolkit.control, or start one with the start_environment action"
        )
    return run


def stop(finish: bool = True) -> LiveRun | None:
    """Stop the environment, if one runs: with `finish`, as a scenario ends (a final
    settle, the reports written, `outcome` the final verdict), else at once. The run
    stopped, or None."""
    global _running
    with _lock:
        run, _running = _running, None
    if run is not None:
        run.close(finish=finish)
    return run


def summary(run: LiveRun) -> dict[str, Any]:
    """A stopped run's final verdict as plain data for a journal: passed, each check's
    result and message, the report's path."""
    outcome = run.outcome
    if outcome is None:
        return {"passed": None, "stopped": "at once, not judged", "folder": str(run.out)}
    return {
        "passed": outcome.passed,
        "checks": {c.name: {"passed": c.passed, "message": c.message} for c in outcome.checks},
        "report": str(run.out / "report.html"),
    }


def duration(value: str | float, field: str) -> float:
    """Scenario seconds from `90s`, `15m`, `11h` or a number of seconds."""
    try:
        return parse_duration(value)
    except TestbedError as exc:
        raise TestbedError(f"{field}: {exc}") from None


def _slug(title: str) -> str:
    """A folder name from an experiment's title: its first words, lower case."""
    words = re.findall(r"[a-z0-9]+", title.lower())
    slug = ""
    for word in words:
        if slug and len(slug) + 1 + len(word) > SLUG_MAX:
            break
        slug = f"{slug}-{word}" if slug else word[:SLUG_MAX]
    return slug or "experiment"


def _stop_at_exit() -> None:
    with contextlib.suppress(Exception):  # the process is ending: no one to report to
        stop(finish=False)


atexit.register(_stop_at_exit)
