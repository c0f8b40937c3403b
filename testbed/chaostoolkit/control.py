"""The control that gives an experiment its testbed environment: up before the experiment
(before the steady-state hypothesis is first probed), down after it, whatever happened.

    "controls": [{"name": "testbed", "provider": {"type": "python",
        "module": "testbed.chaostoolkit.control",
        "arguments": {"topology": "active-standby", "clock": "1h = 1s", "rate": "600/h",
                      "seed": 7, "settings": {"extract_data_stuck_threshold": "8h"}}}}]

Arguments, all optional: `topology` (a name or a file), `clock` (realtime `1h = 1s` by
default; `virtual`: scenario time moves only in `wait`, `settle` and procedures), `rate`, `seed`,
`settings` (as in a scenario file), `backend` (`local` or `docker`), `out` (the run folder:
history and reports; by default under `.testbed/reports`), `home` (where runs keep their
servers; by default `TESTBED_HOME` or `.testbed`).

Chaos Toolkit checks the control when it validates the experiment, so a mistake in these
arguments stops `chaos run` before anything starts. A control's own failure would only be
logged, so an environment that cannot start interrupts the experiment instead, saying why.
At the end the run finishes as a scenario does (a final settle, the reports written and
logged); an interrupted experiment stops everything at once. `cleanup_control`, which Chaos
Toolkit calls last even when the run failed unexpectedly, stops whatever is left.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chaoslib.exceptions import InterruptExecution, InvalidControl

from testbed.chaostoolkit import environment
from testbed.errors import TestbedError
from testbed.scenarios.spec import Scenario

logger = logging.getLogger("chaostoolkit")  # Chaos Toolkit's console and log file

SCENARIO_ARGUMENTS = ("topology", "clock", "rate", "seed", "settings")
ARGUMENTS = (*SCENARIO_ARGUMENTS, "backend", "out", "home")


def validate_control(control: dict[str, Any]) -> None:
    """The arguments, checked before the experiment runs (those taken from the
    experiment's configuration, `${...}`, only once it runs)."""
    arguments = (control.get("provider") or {}).get("arguments") or {}
    if "${" in json.dumps(arguments):
        return
    try:
        _scenario(arguments, str(control.get("name", "testbed")))
    except TestbedError as exc:
        raise InvalidControl(f"control '{control.get('name')}': {exc}") from None


def before_experiment_control(context: dict[str, Any], **arguments: Any) -> None:
    """Bring the environment up; an experiment that cannot have one is interrupted."""
    try:
        scenario = _scenario(arguments, str(context.get("title", "chaostoolkit")))
        run = environment.start(
            scenario, arguments.get("backend", "local"), arguments.get("out"), arguments.get("home")
        )
    except Exception as exc:  # Chaos Toolkit would only log a control's error, and go on
        reason = str(exc) if isinstance(exc, TestbedError) else f"{type(exc).__name__}: {exc}"
        raise InterruptExecution(f"testbed: the environment did not start: {reason}") from None
    logger.info(
        f"testbed: environment up: run {run.deployment.backend.id}"
        f" ({len(run.deployment.servers)} servers), folder {run.out}"
    )


def after_experiment_control(
    context: dict[str, Any], state: dict[str, Any] | None = None, **arguments: Any
) -> None:
    """Take the environment down: finished and judged, or at once if interrupted."""
    interrupted = (state or {}).get("status") == "interrupted"
    try:
        run = environment.stop(finish=not interrupted)
    except Exception as exc:  # every server is stopped anyway; say why it was not clean
        logger.error(f"testbed: the environment did not finish cleanly: {exc}")
        return
    if run is None:
        return
    if run.outcome is None:
        logger.info(f"testbed: environment stopped at once, not judged; folder {run.out}")
        return
    failed = [c.name for c in run.outcome.checks if not c.passed]
    verdict = f"failed: {', '.join(failed)}" if failed else "every check passed"
    logger.info(f"testbed: final verdict: {verdict}; report: {run.out / 'report.html'}")


def cleanup_control() -> None:
    """Stop whatever is left, at once (the experiment ended without its after-control)."""
    environment.stop(finish=False)


def _scenario(arguments: dict[str, Any], name: str) -> Scenario:
    unknown = sorted(set(arguments) - set(ARGUMENTS))
    if unknown:
        raise TestbedError(
            f"unknown argument {', '.join(map(repr, unknown))} (arguments: {', '.join(ARGUMENTS)})"
        )
    given = {k: arguments[k] for k in SCENARIO_ARGUMENTS if k in arguments}
    return environment.scenario_for(name, **given)
