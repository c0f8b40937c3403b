"""The swarm backend on a real engine: servers, the WAN proxy and the pipeline's components
as services of a one-node swarm on loopback; faults through the node agent on the task's own
process; the same verdicts as on the local backend; nothing of the run left afterwards.

The supervisor (every task's PID 1) is tested here without an engine too. The engine tests
skip, with the reason, where no Docker engine answers or the images are not built; the
swarm is made by the backend when none is active, and left when the run ends.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
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
    """What carries the run's label (any run's: "")."""
    label = {"label": f"bc-testbed.run={run_id}" if run_id else "bc-testbed.run"}
    active = _swarm_state(engine) == "active"
    services = [s.name for s in engine.services.list(filters=label)] if active else []
    secrets = [s.name for s in engine.secrets.list(filters=label)] if active else []
    return {
        "services": services,
        "secrets": secrets,
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


def _assert_nothing_left(engine, run_id: str, swarm_before: str, labels_before: list) -> None:
    """No service, container, network or volume of the run ("": of any run), no node label
    it added, and the swarm as it was before."""
    assert _of_run(engine, run_id) == {
        "services": [],
        "secrets": [],
        "containers": [],
        "networks": [],
        "volumes": [],
    }
    assert _site_labels(engine) == labels_before
    assert _swarm_state(engine) == swarm_before


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
    _assert_nothing_left(engine, backend.id, swarm_before, labels_before)


@pytest.mark.docker
def test_a_killed_icon_loses_its_process_not_its_container_or_its_queue(swarm_run) -> None:
    """icon2b writes to idb1 across the WAN. With the WAN cut it queues on its volume; a
    kill is a SIGKILL of the ICON inside its container (which stays, with its network), and
    the restarted ICON drains the same queue into idb1."""
    deployment, pipeline = swarm_run
    # Ports published on every address of the node let in nobody without the run's
    # secrets: a server wants the password, the WAN proxy's API the token (a call reaches
    # the task through the engine's port forwarding, so not from its loopback).
    idb1 = deployment.server("idb1")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            host=idb1.host, port=idb1.port, user="postgres", passfile="/dev/null"
        ).close()
    proxy = deployment.backend.proxy_client
    api = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    api.request("GET", "/proxies")
    assert api.getresponse().status == 401
    assert proxy.proxies()  # the run's own client sends the token
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


@pytest.mark.docker
def test_down_all_removes_what_a_killed_swarm_runner_left(engine, tmp_path: Path) -> None:
    """A runner killed with SIGKILL cleans nothing; `testbed down --all` removes the run's
    services, containers, networks and volumes, the node labels it added, and the swarm if
    the run made it."""
    home = tmp_path / "home"
    swarm_before = _swarm_state(engine)
    labels_before = _site_labels(engine)
    runner = subprocess.Popen(
        [sys.executable, "-m", "testbed", "up", "--backend", "swarm", "--home", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    run_id = None
    while time.monotonic() < deadline and run_id is None and runner.poll() is None:
        status = subprocess.run(
            [sys.executable, "-m", "testbed", "status", "--json", "--home", str(home)],
            capture_output=True,
            text=True,
        )
        runs = json.loads(status.stdout or "[]")
        if runs and any(s["name"] == "infomart2" for s in runs[0]["servers"]):
            run_id = runs[0]["run"]
        time.sleep(0.5)
    assert run_id, f"the swarm topology did not come up: {runner.stderr and runner.poll()}"
    runner.kill()
    runner.wait()
    left = _of_run(engine, run_id)
    assert left["services"] and left["volumes"]
    assert _site_labels(engine)  # the node carries the site labels while the run lives
    down = subprocess.run(
        [sys.executable, "-m", "testbed", "down", "--all", "--home", str(home)],
        capture_output=True,
        text=True,
    )
    assert down.returncode == 0, down.stderr
    _assert_nothing_left(engine, run_id, swarm_before, labels_before)


@pytest.mark.docker
def test_a_scenario_that_kills_icon2b_keeps_its_queue_on_swarm(
    engine, run_scenario, tmp_path: Path
) -> None:
    """icon2b is killed while the WAN is down and its queue holds what it could not write;
    the restarted ICON drains it: nothing is lost, nothing doubled, on swarm as on local."""
    scenario = tmp_path / "icon2b-killed.yaml"
    scenario.write_text(
        """name: icon2b-killed-on-swarm
description: icon2b killed with a queue, during a short WAN outage
clock: 1h = 1s
settings:
  extract_data_stuck_threshold: 8h
workload:
  rate: 600/h
  seed: 5
steps:
  - at: 1h
    partition: [site1, site2]
  - at: 2h
    kill: icon2b
  - at: 3h
    start: icon2b
  - at: 4h
    heal: [site1, site2]
  - at: 4h
    settle: 2h
expect:
  loss:
    site1: 0
    site2: 0
  duplicates: 0
"""
    )
    outcome = run_scenario(scenario, backend="swarm")
    assert outcome.passed, [c.message for c in outcome.checks if not c.passed]
    assert outcome.figures["lost_events"] == {"site1": 0, "site2": 0}
    samples = [
        entry
        for line in (tmp_path / "report" / "history.jsonl").read_text().splitlines()
        if (entry := json.loads(line))["kind"] == "sample"
    ]
    before_kill = [s for s in samples if 1.5 * 3600 <= s["scenario_time"] < 2 * 3600]
    while_dead = [s for s in samples if 2.2 * 3600 <= s["scenario_time"] < 2.8 * 3600]
    assert any((s["queued_events"]["icon2b"] or 0) > 0 for s in before_kill)
    assert while_dead and all(s["states"]["icon2b"] == "stopped" for s in while_dead)


def on_realtime(name: str, folder: Path) -> Path:
    """A catalog file on the realtime clock at 1h = 1s, its WAN latency a wall figure of
    the same effect (the catalog's 20 scenario minutes would be 20 wall minutes here)."""
    from testbed.scenarios.spec import find_scenario

    text = Path(find_scenario(name)).read_text()
    text = re.sub(r"(?m)^clock: .*$", "clock: 1h = 1s", text)
    text = re.sub(r"(?m)^(\s+)ms: 1200000\b.*$", r"\1ms: 100", text)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.docker
@pytest.mark.parametrize("scenario", ["wan-outage-long", "disaster-recovery"])
def test_catalog_scenarios_lose_on_swarm_what_they_lose_on_local(
    engine, run_scenario, scenario: str, tmp_path: Path
) -> None:
    """The same verdict, and the same losses within the loss check's tolerance once each
    backend's steps land when they land (`step_lags`: a step on a busy machine can take
    effect hundreds of ms late, which the model reads from the history)."""
    swarm_before, labels_before = _swarm_state(engine), _site_labels(engine)
    realtime = on_realtime(scenario, tmp_path)  # swarm keeps the realtime clock
    swarm = run_scenario(realtime, backend="swarm")
    # Nothing of the run is left: no service, container, network, volume or node label; and
    # the swarm only if it was there before.
    _assert_nothing_left(engine, "", swarm_before, labels_before)
    local = run_scenario(realtime, backend="local")
    for outcome in (swarm, local):
        assert outcome.passed, [c.message for c in outcome.checks if not c.passed]
    s, lo = swarm.figures, local.figures
    assert s["duplicates"] == lo["duplicates"] == 0
    assert s["stuck_sites"] == lo["stuck_sites"]
    rate = 600 / 3600
    if scenario == "disaster-recovery":
        # Site 1 is lost 2 h into an outage: what it wrote since is lost, exactly its
        # census in each run, whose edges depend on when each ICON last wrote.
        for site, lost in lo["lost_events"].items():
            assert abs(s["lost_events"][site] - lost) <= 0.1 * 2 * 3600 * rate
        return

    def lag(figures: dict, verb: str) -> float:
        return next(x["lag_s"] for x in figures["step_lags"] if x["verb"] == verb)

    apart = sum(abs(lag(s, verb) - lag(lo, verb)) for verb in ("partition", "heal"))
    slack = (2 * max(s["tolerance_s"], lo["tolerance_s"]) + apart) * rate + 5
    for site, lost in lo["lost_events"].items():
        assert abs(s["lost_events"][site] - lost) <= slack, (site, s["lost_events"], lost)
