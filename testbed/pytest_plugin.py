"""pytest fixtures for users' own chaos tests (registered through the `pytest11` entry point).

Every fixture is a context manager underneath: a failing or interrupted test still stops
every server it started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.backends.local import LocalBackend
from testbed.deployment import Deployment, bring_up
from testbed.topology import Topology, default_topology


@pytest.fixture(scope="session")
def testbed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this test session's runs live."""
    return tmp_path_factory.mktemp("testbed-home")


@pytest.fixture
def testbed_backend(testbed_home: Path) -> Iterator[LocalBackend]:
    """An empty local run: make servers with `new_server(name).init().start()`."""
    with LocalBackend(home=testbed_home) as backend:
        yield backend


@pytest.fixture
def testbed_topology() -> Topology:
    """The topology `testbed_deployment` starts; override it to test another one."""
    return default_topology()


@pytest.fixture
def testbed_deployment(testbed_backend: LocalBackend, testbed_topology: Topology) -> Deployment:
    """The topology running on real servers, stopped after the test."""
    return bring_up(testbed_topology, testbed_backend)
