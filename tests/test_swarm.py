"""The swarm backend on a real engine: servers, the WAN proxy and the pipeline's components
as services of a one-node swarm on loopback; faults through the node agent on the task's own
process; the same verdicts as on the local backend; nothing of the run left afterwards.

The supervisor (every task's PID 1) is tested here without an engine too. The engine tests
skip, with the reason, where no Docker engine answers or the images are not built; the
swarm is made by the backend when none is active, and left when the run ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.backends.supervise import Supervisor

REPO = Path(__file__).resolve().parents[1]


def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_the_supervisor_outlives_its_child_and_obeys_each_signal(tmp_path: Path) -> None:
    """USR1 starts the child with the env overrides, USR2 kills its whole process group,
    TERM is passed on, HUP ends the supervisor. Its state file says so each time."""
    folder = tmp_path / "supervise"
    child = "echo started $ROLE; sleep 300 & exec sleep 300"  # a grandchild, like a backend
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "testbed.backends.supervise", "sh", "-c", child],
        env={**os.environ, "SUPERVISE_DIR": str(folder), "SUPERVISE_AUTOSTART": "0"},
        cwd=REPO,
    )
    try:
        assert _until(lambda: _state(folder).get("state") == "stopped")
        (folder / "env.json").write_text(json.dumps({"ROLE": "standby"}))
        supervisor.send_signal(signal.SIGUSR1)
        assert _until(lambda: _state(folder).get("state") == "running")
        pid = _state(folder)["pid"]
        assert _until(lambda: "started standby" in (folder / "process.log").read_text())
        group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pid]
        assert len(group) == 2  # the child and its grandchild

        supervisor.send_signal(signal.SIGUSR2)
        assert _until(lambda: _state(folder).get("state") == "stopped")
        assert _state(folder)["exit"] == -signal.SIGKILL
        assert _until(lambda: not any(_pgid(int(p)) == pid for p in group))
        assert supervisor.poll() is None  # the supervisor (the task) lives on

        supervisor.send_signal(signal.SIGUSR1)
        assert _until(lambda: _state(folder).get("starts") == 2)
        supervisor.send_signal(signal.SIGTERM)
        assert _until(lambda: _state(folder).get("state") == "stopped")
        assert _state(folder)["exit"] == -signal.SIGTERM
        assert supervisor.poll() is None

        supervisor.send_signal(signal.SIGHUP)
        assert supervisor.wait(timeout=10) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_the_supervisor_drops_an_env_override_set_to_null(tmp_path: Path) -> None:
    """A promoted standby's PRIMARY is removed, not set to 'None'."""
    supervisor = Supervisor(["true"], tmp_path, signal.SIGTERM)
    (tmp_path / "env.json").write_text(json.dumps({"PRIMARY": None, "NAME": "idb1"}))
    os.environ["PRIMARY"] = "wan-proxy:20000"
    try:
        env = supervisor._env()
    finally:
        del os.environ["PRIMARY"]
    assert "PRIMARY" not in env
    assert env["NAME"] == "idb1"


# --- on a real engine ---------------------------------------------------------------------


def _engine_or_skip():
    from testbed.backends import images
    from testbed.errors import TestbedError

    try:
        client = images.engine_client()
        images.current_tags(("postgres", "proxy", "pipeline"))
    except TestbedError as exc:
        pytest.skip(str(exc))
    return client


@pytest.fixture(scope="module")
def engine():
    return _engine_or_skip()


def _swarm_state(engine) -> str:
    return engine.info().get("Swarm", {}).get("LocalNodeState", "inactive")


def _of_run(engine, run_id: str) -> dict[str, list[str]]:
    label = {"label": f"bc-testbed.run={run_id}"}
    services = (
        [s.name for s in engine.services.list(filters=label)]
        if _swarm_state(engine) == "active"
        else []
    )
    return {
        "services": services,
        "containers": [c.name for c in engine.containers.list(all=True, filters=label)],
        "networks": [n.name for n in engine.networks.list(filters=label)],
        "volumes": [v.name for v in engine.volumes.list(filters=label)],
    }


def _site_labels(engine) -> list[str]:
    if _swarm_state(engine) != "active":
        return []
    return [
        key
        for node in engine.nodes.list()
        for key in (node.attrs["Spec"].get("Labels") or {})
        if key.startswith("bc-testbed.")
    ]


@pytest.fixture
def swarm_run(engine, tmp_path: Path):
    """A deployment and its pipeline on a fresh swarm backend; afterwards, nothing of the
    run is left, nor the swarm if the run made it."""
    from testbed.backends.swarm import SwarmBackend
    from testbed.clock import Clock
    from testbed.deployment import bring_up
    from testbed.pipeline.control import Pipeline, PipelineSettings
    from testbed.topology import load_topology

    swarm_before = _swarm_state(engine)
    labels_before = _site_labels(engine)
    backend = SwarmBackend(home=tmp_path / "home")
    try:
        deployment = bring_up(load_topology("active-standby"), backend)
        pipeline = Pipeline(deployment, PipelineSettings(), Clock.start(factor=3600))
        yield deployment, pipeline
        pipeline.close()
    finally:
        backend.close()
    assert _of_run(engine, backend.id) == {
        "services": [],
        "containers": [],
        "networks": [],
        "volumes": [],
    }
    assert _site_labels(engine) == labels_before
    assert _swarm_state(engine) == swarm_before


@pytest.mark.docker
def test_a_killed_icon_loses_its_process_not_its_container_or_its_queue(swarm_run) -> None:
    """icon2b writes to idb1 across the WAN. With the WAN cut it queues on its volume; a
    kill is a SIGKILL of the ICON inside its container (which stays, with its network), and
    the restarted ICON drains the same queue into idb1."""
    deployment, pipeline = swarm_run
    pipeline.start()
    icon = pipeline.icons["icon2b"]
    container = icon.task.container
    deployment.wan.partition("site1", "site2")
    pipeline.wait_for(lambda f: (f["queued_events"].get("icon2b") or 0) >= 5, 60, "icon2b queueing")
    pid = icon.pid
    icon.kill()
    assert icon.state() == "stopped"
    assert icon.exit_code() == -signal.SIGKILL
    assert icon.task.container == container
    assert icon.task.supervised()["state"] == "stopped"
    queued = _queued_ids(icon.local_path("queue"))
    assert len(queued) >= 5  # the queue survived on the volume

    deployment.wan.heal()
    icon.start()
    pipeline.wait_ready(icon)
    assert icon.pid != pid
    pipeline.wait_for(lambda f: f["queued_events"].get("icon2b") == 0, 60, "icon2b drained")
    rows = {
        r[0]
        for r in deployment.server("idb1").execute("SELECT event_id FROM events", dbname="icon2b")
    }
    assert queued <= rows


def _queued_ids(path: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(path) as db:
        bodies = db.execute("SELECT body FROM queue WHERE kind = 'event'").fetchall()
    return {json.loads(body)["id"] for (body,) in bodies}
