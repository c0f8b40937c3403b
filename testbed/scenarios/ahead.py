"""Scenario files a pytest session collected, run a few at a time ahead of their turn.

On virtual time a run's outcome does not depend on how busy the machine is (DESIGN.md
section 2), so the scenario files of a session need not wait for each other: while pytest
reports one, the next ones already run, each in an interpreter of its own (as `testbed run
--all` does). Only a contiguous block of such files is run ahead, never beyond it: the
tests around them (some on the realtime clock, which a busy machine would disturb) run
alone as before. A run that has not started when the session stops (`-x`, Ctrl-C) never
does; one under way is stopped through its own cleanup.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable
from typing import Generic, TypeVar

from testbed.errors import CannotRunHere
from testbed.scenarios.batch import Job, run_job, stop_workers, stoppable
from testbed.verdict.checks import Outcome

K = TypeVar("K")
Result = Outcome | CannotRunHere


class RunAhead(Generic[K]):
    """Jobs keyed by the test item that reports each, `jobs` of them running at a time."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._futures: dict[K, concurrent.futures.Future[Result]] = {}

    def result(self, key: K, block: Callable[[], list[tuple[K, Job]]]) -> Result:
        """The outcome of `key`'s job. If it was not submitted yet, the jobs of `block()`
        (a contiguous run of items starting with this one) are submitted first, in order."""
        if key not in self._futures:
            self.close()  # whatever was ahead belongs to a block already reported
            context = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.jobs, mp_context=context
            )
            for item, job in block():
                self._futures[item] = self._pool.submit(stoppable, run_job, job)
        return self._futures.pop(key).result()

    def close(self) -> None:
        """Stop what still runs ahead and forget what was never asked for."""
        if self._pool is None:
            return
        pending = list(self._futures.values())
        for future in pending:
            future.cancel()
        if any(not f.done() for f in pending):
            stop_workers(self._pool)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._futures.clear()
