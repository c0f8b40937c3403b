"""The suite fails if any PostgreSQL server that appeared while it ran is still running at
the end: a leaked server is a defect even when every test passed."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import procs


def _testbed_postmasters() -> set[int]:
    """Postmasters started by the testbed: their data directory sits in a run folder."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = procs.cmdline(int(entry.name))
            if (
                argv
                and argv[0].endswith("postgres")
                and "-D" in argv
                and "/runs/" in " ".join(argv)
            ):
                found.add(int(entry.name))
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_before] = _testbed_postmasters()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leftovers = sorted(
        pid for pid in _testbed_postmasters() - session.config.stash[_before] if procs.alive(pid)
    )
    if leftovers:
        for pid in leftovers:
            procs.stop_group(pid, pid)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(
            f"\nFAILED: {len(leftovers)} testbed postgres server(s) were left running: {leftovers}"
        )


_before = pytest.StashKey[set[int]]()


@pytest.fixture(autouse=True)
def _own_run_registry(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test registers its runs in a registry of its own: a test's `testbed down --all`
    stops what that test started, never the runs of the tests around it."""
    from testbed.backends import runs

    monkeypatch.setenv(runs.REGISTRY_ENV, str(tmp_path_factory.mktemp("run-registry")))
    yield
