"""Several scenarios at once, each in an interpreter of its own.

On virtual time a run's outcome does not depend on how busy the machine is (DESIGN.md
section 2), so the catalog can share the machine: a run spends much of its wall time
waiting on its own processes in turn, and another run fills those waits. On the realtime
clock runs that share the machine move each other's edges, so they go one at a time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from testbed.errors import CannotRunHere
from testbed.procs import stop_on_signals
from testbed.scenarios.spec import Scenario
from testbed.vclock.engine_clock import VIRTUAL_FACTOR
from testbed.verdict.checks import Outcome

T = TypeVar("T")
MAX_DEFAULT_JOBS = 4  # beyond this the servers' own work is what a run waits for


@dataclass(frozen=True)
class Job:
    """One scenario to run: what a worker needs to load and run it on its own."""

    name: str
    source: str  # a catalog name or a file
    clock: str | None
    out: Path
    options: dict  # ScenarioRun's keyword arguments (home, seed, backend, ...)


def default_jobs(scenarios: list[Scenario], backend: str) -> int:
    """As many runs at once as the machine has cores when every one keeps virtual time on
    a backend that keeps it; one otherwise."""
    if backend not in ("local", "docker") or any(s.factor != VIRTUAL_FACTOR for s in scenarios):
        return 1
    return default_parallel(len(scenarios))


def default_parallel(count: int) -> int:
    """One run per core, up to MAX_DEFAULT_JOBS, and no more than there are runs."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_JOBS, count))


def run_job(
    job: Job, progress: Callable[[float, str], None] | None = None
) -> Outcome | CannotRunHere:
    """Run one scenario and write its reports; a scenario the backend cannot run gives
    its refusal back (the batch goes on with the others)."""
    from testbed.scenarios.engine import ScenarioRun
    from testbed.scenarios.spec import load_scenario
    from testbed.verdict.report import write_reports

    scenario = load_scenario(job.source, job.clock)
    try:
        ScenarioRun(scenario, job.out, progress=progress, **job.options).run()
    except CannotRunHere as exc:
        return exc
    return write_reports(job.out)


def stoppable(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a pool's worker, stopped through its cleanup by a SIGTERM."""
    stop_on_signals()  # a SIGTERM from the parent stops the run through its cleanup
    try:
        return fn(*args)
    finally:
        # Idle again, with nothing to clean up: a SIGTERM just ends the worker, quietly
        # (not with a KeyboardInterrupt's traceback from the pool's queue).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def in_parallel(fn: Callable[..., T], calls: list[tuple[Any, ...]], parallel: int) -> Iterator[T]:
    """`fn(*args)` for each of `calls`, `parallel` at a time, each in a new interpreter (a
    run holds signal handlers, a fork server and a clock of its own); results in the order
    given. Interrupted, it stops every run still going (each through its own cleanup)
    before it returns."""
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=parallel, mp_context=context)
    futures: list[concurrent.futures.Future[T]] = []
    try:
        futures = [pool.submit(stoppable, fn, *args) for args in calls]
        for future in futures:
            yield future.result()
    except BaseException:
        # Interrupted, or left before the end (a consumer that zips the results with
        # their calls leaves it at the last yield): stop whatever still runs.
        if all(f.done() for f in futures):
            raise
        stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """SIGTERM every worker of `pool`: each run under way stops through its own cleanup."""
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)


def run_many(jobs: list[Job], parallel: int) -> Iterator[tuple[Job, Outcome | CannotRunHere]]:
    """Each job with its outcome, in the order given, `parallel` at a time."""
    yield from zip(jobs, in_parallel(run_job, [(job,) for job in jobs], parallel), strict=False)
