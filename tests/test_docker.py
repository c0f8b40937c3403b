"""The docker backend on a real engine: the topology in containers, one network per site,
replication through the proxy container, container faults, cleanup, and scenarios with the
same outcome as on the local backend.

Skipped, with the reason, where no Docker engine answers or the images are not built
(`testbed images build`); `.ci/run` starts an engine and builds them offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from testbed.history import of_kind, read_history

pytestmark = pytest.mark.docker


def _engine_or_skip():
    """The engine's client, or a skip that says what is missing (engine or images)."""
    from testbed.backends import images
    from testbed.errors import TestbedError

    try:
        client = images.engine_client()
        images.current_tags()
    except TestbedError as exc:
        pytest.skip(str(exc))
    return client


@pytest.fixture(scope="module")
def engine():
    return _engine_or_skip()


@pytest.fixture
def docker_backend(engine, tmp_path: Path):
    from testbed.backends.docker import DockerBackend

    with DockerBackend(home=tmp_path / "home") as backend:
        yield backend
    assert not backend.leftovers()


def _labelled(engine, run_id: str) -> dict[str, list[str]]:
    label = {"label": f"bc-testbed.run={run_id}"}
    return {
        "containers": [c.name for c in engine.containers.list(all=True, filters=label)],
        "networks": [n.name for n in engine.networks.list(filters=label)],
        "volumes": [v.name for v in engine.volumes.list(filters=label)],
    }


def test_the_topology_runs_in_containers_with_replication_through_the_proxy(
    engine, docker_backend
) -> None:
    from testbed.deployment import bring_up
    from testbed.topology import INFOMART_DATABASE, default_topology

    deployment = bring_up(default_topology(), docker_backend)
    primary, standby = deployment.server("infomart1"), deployment.server("infomart2")
    assert standby.is_in_recovery()
    conninfo = standby.scalar("SELECT conninfo FROM pg_stat_wal_receiver")
    assert "host=wan-proxy" in conninfo  # the standby streams through the proxy container
    primary.execute("CREATE TABLE t AS SELECT 1 AS x", dbname=INFOMART_DATABASE)
    primary.wait_for_catchup(standby, timeout=30)
    assert standby.scalar("SELECT x FROM t", dbname=INFOMART_DATABASE) == 1
    # Each site is its own network; only the proxy container is on both.
    networks = {
        name: set(c.attrs["NetworkSettings"]["Networks"])
        for name, c in ((n, docker_backend.nodes[n].container) for n in ("idb1", "idb2"))
    }
    assert networks["idb1"].isdisjoint(networks["idb2"])
    assert deployment.wan is not None
    deployment.wan.partition("site1", "site2", mode="reset")
    primary.execute("INSERT INTO t VALUES (2)", dbname=INFOMART_DATABASE)
    time.sleep(1.0)
    assert standby.scalar("SELECT count(*) FROM t", dbname=INFOMART_DATABASE) == 1
    deployment.wan.heal()
    primary.wait_for_catchup(standby, timeout=60)
    assert standby.scalar("SELECT count(*) FROM t", dbname=INFOMART_DATABASE) == 2


def test_a_killed_container_restarts_with_its_data_and_its_port(docker_backend) -> None:
    server = docker_backend.new_server("idb1", "site1", "idb")
    docker_backend.network("site1")
    server.init().start()
    server.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    address = server.address
    server.kill()
    assert server.state() == "stopped"
    server.start()
    assert server.address == address
    assert server.scalar("SELECT answer FROM kept") == 42
    server.pause()
    assert server.state() == "paused"
    server.resume()
    assert server.scalar("SELECT 1") == 1


def test_down_all_removes_what_a_killed_runner_left(engine, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ}
    runner = subprocess.Popen(
        [sys.executable, "-m", "testbed", "up", "--backend", "docker", "--home", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 120
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        status = subprocess.run(
            [sys.executable, "-m", "testbed", "status", "--json", "--home", str(home)],
            capture_output=True,
            text=True,
            env=env,
        )
        runs = json.loads(status.stdout or "[]")
        if runs and len([s for s in runs[0]["servers"] if s["name"] == "infomart2"]):
            run_id = runs[0]["run"]
        time.sleep(0.5)
    assert run_id, "the docker topology did not come up"
    runner.kill()  # SIGKILL: no cleanup at all
    runner.wait()
    assert _labelled(engine, run_id)["containers"]
    down = subprocess.run(
        [sys.executable, "-m", "testbed", "down", "--all", "--home", str(home)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert down.returncode == 0, down.stderr
    assert _labelled(engine, run_id) == {"containers": [], "networks": [], "volumes": []}


@pytest.mark.parametrize("scenario", ["normal-operation", "disaster-recovery"])
def test_catalog_scenarios_pass_on_docker(run_scenario, engine, scenario: str) -> None:
    outcome = run_scenario(scenario, backend="docker")
    assert outcome.passed, [c.message for c in outcome.checks if not c.passed]


def test_a_transfer_over_a_slow_link_takes_its_pace_on_docker(
    run_scenario, engine, tmp_path: Path
) -> None:
    """`return-to-normal-after-standby-loss` copies Info Mart 1 to site 3 over a 10 KB/s
    link. On docker the new standby takes the base backup itself as it first starts: that
    start is the copy, so it runs with the time running (held, it stalled for a minute of
    wall time and failed) and is what the transfer's figures measure."""
    outcome = run_scenario("return-to-normal-after-standby-loss", backend="docker")
    assert outcome.passed, [c.message for c in outcome.checks if not c.passed]
    history = read_history(tmp_path / "report" / "history.jsonl")
    (copy,) = [e for e in of_kind(history, "dr") if e["procedure"] == "transfer"]
    assert copy["wan_bytes"] > 40e6, copy
    assert 9.0 <= copy["scenario_rate_kb_s"] <= 10.5, copy  # the link's 10 KB/s
    assert copy["copy_scenario_s"] > 3600, copy


def test_wan_outage_long_has_the_same_figures_on_both_backends(run_scenario, engine) -> None:
    """Faults land at the same scenario times, give or take the time each backend takes to
    apply a step (reported as `step_lags`: the heal goes through a container's published
    port) and the wall-clock jitter the loss check tolerates, so the loss windows and the
    losses agree. (The runs' lengths differ: settling ends when reporting has caught up.)"""
    docker = run_scenario("wan-outage-long", backend="docker")
    local = run_scenario("wan-outage-long", backend="local")
    for outcome in (docker, local):
        assert outcome.passed, [c.message for c in outcome.checks if not c.passed]
    d, lo = docker.figures, local.figures
    assert d["duplicates"] == lo["duplicates"] == 0
    assert d["stuck_sites"] == lo["stuck_sites"] == ["site2"]
    tolerance = max(d["tolerance_s"], lo["tolerance_s"])

    def heal_lag(figures: dict) -> float:
        return next(s["lag_s"] for s in figures["step_lags"] if s["verb"] == "heal")

    apart = abs(heal_lag(d) - heal_lag(lo))
    assert d["planned_windows"] == lo["planned_windows"] or all(
        abs(ours[i] - theirs[i]) <= tolerance
        for site, windows in d["planned_windows"].items()
        for ours, theirs in zip(windows, lo["planned_windows"][site], strict=True)
        for i in (0, 1)
    )
    assert d["predicted_windows"].keys() == lo["predicted_windows"].keys()
    for site, windows in d["predicted_windows"].items():
        assert len(windows) == len(lo["predicted_windows"][site])
        for ours, theirs in zip(windows, lo["predicted_windows"][site], strict=True):
            assert abs(ours[0] - theirs[0]) <= tolerance
            assert abs(ours[1] - theirs[1]) <= tolerance + apart
    assert d["lost_events"]["site1"] == lo["lost_events"]["site1"] == 0
    # Both lose site 2's (outage - threshold); each edge of the window may move by the
    # tolerance, and its end by the difference in heal lags, at 600 events per site-hour.
    slack = (2 * tolerance + apart) * 600 / 3600 + 5
    assert abs(d["lost_events"]["site2"] - lo["lost_events"]["site2"]) <= slack
    assert abs(d["predicted_lost_events"]["site2"] - lo["predicted_lost_events"]["site2"]) <= slack


def test_the_wan_container_can_be_any_toxiproxy_image(engine, tmp_path: Path) -> None:
    """`--toxiproxy-image`: the backend drives the WAN container through the Toxiproxy API
    alone, started with Toxiproxy's own flags. Our proxy image stands in for the real one,
    which needs a registry."""
    from testbed.backends import images
    from testbed.backends.docker import DockerBackend
    from testbed.deployment import bring_up
    from testbed.topology import INFOMART_DATABASE, default_topology

    image = images.current_tags()["proxy"]
    with DockerBackend(home=tmp_path / "home", toxiproxy_image=image) as backend:
        deployment = bring_up(default_topology(), backend)
        assert backend.proxy_container.attrs["Config"]["Cmd"] == ["-host=0.0.0.0"]
        primary, standby = deployment.server("infomart1"), deployment.server("infomart2")
        primary.execute("CREATE TABLE t AS SELECT 7 AS x", dbname=INFOMART_DATABASE)
        primary.wait_for_catchup(standby, timeout=30)
        assert standby.scalar("SELECT x FROM t", dbname=INFOMART_DATABASE) == 7
        assert deployment.wan is not None
        deployment.wan.partition("site1", "site2", mode="reset")
        assert not deployment.wan.client.proxy("infomart2-to-infomart1").enabled
        deployment.wan.heal()
    assert not backend.leftovers()


def test_a_port_published_by_a_server_answers_only_on_loopback(docker_backend) -> None:
    server = docker_backend.new_server("idb9", "site1", "idb")
    docker_backend.network("site1")
    server.init().start()
    ports = docker_backend.nodes["idb9"].container.attrs["HostConfig"]["PortBindings"]
    assert all(b["HostIp"] == "127.0.0.1" for bindings in ports.values() for b in bindings)
    with psycopg.connect(server.conninfo()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # ... and only with the run's password (SCRAM-SHA-256, from the mounted password file).
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            host="127.0.0.1", port=server.port, user="postgres", passfile="/dev/null"
        ).close()


def _compose_command() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        try:
            if subprocess.run([*command, "version"], capture_output=True).returncode == 0:
                return command
        except OSError:
            continue
    return None


def test_a_scenario_runs_against_the_compose_environment(
    engine, run_scenario, tmp_path: Path
) -> None:
    from testbed.backends.composefile import write
    from testbed.backends.local import port_is_free
    from testbed.topology import default_topology

    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    if not all(port_is_free("127.0.0.1", p) for p in (8474, 15432, 15433, 15434, 15435)):
        pytest.skip("the Compose environment's fixed ports are in use on this machine")
    # The checked-in files, with a password file of their own (`testbed compose` writes one).
    compose_file = write(default_topology(), tmp_path / "compose")[0]
    assert (tmp_path / "compose" / "pgpass").stat().st_mode & 0o077 == 0
    base = [*command, "-p", "bc-testbed", "-f", str(compose_file)]
    up = subprocess.run([*base, "up", "-d"], capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        outcome = run_scenario("wan-outage-short", backend="compose", clock="1h = 1s")
        assert outcome.passed, [c.message for c in outcome.checks if not c.passed]
        # from a clean slate
        again = run_scenario("normal-operation", backend="compose", clock="1h = 1s")
        assert again.passed, [c.message for c in again.checks if not c.passed]
    finally:
        subprocess.run([*base, "down", "-v"], capture_output=True, timeout=300)


def test_the_proxy_container_reaches_the_clock_folder_at_the_same_path(
    engine, tmp_path: Path
) -> None:
    """On virtual time the WAN proxy joins the run's clock: the clock's folder is mounted
    into its container at the host's path, where its socket takes a connection and its
    `now` file reads the run's time."""
    from testbed.backends.docker import DockerBackend
    from testbed.deployment import bring_up
    from testbed.topology import default_topology
    from testbed.vclock.coordinator import Coordinator

    folder = Coordinator._socket_path(tmp_path / "clock").parent
    with DockerBackend(home=tmp_path / "home", clock_dir=folder) as backend:
        bring_up(default_topology(), backend)
        with Coordinator(folder, at=1234.5) as coordinator:
            probe = (
                "import mmap, socket, struct, sys\n"
                "sock = socket.socket(socket.AF_UNIX)\n"
                "sock.connect(sys.argv[1])\n"
                "with open(sys.argv[2], 'rb') as f:\n"
                "    m = mmap.mmap(f.fileno(), 8, access=mmap.ACCESS_READ)\n"
                "    print(struct.unpack('d', m[:8])[0])\n"
            )
            from testbed.vclock.wire import now_path

            code, output = backend.proxy_container.exec_run(
                ["python3", "-c", probe, str(coordinator.path), str(now_path(coordinator.path))]
            )
        assert code == 0, output.decode(errors="replace")
        assert float(output.decode()) == 1234.5
    assert not backend.leftovers()


VIRTUAL_OUTAGE = """\
name: virtual-outage-on-docker
description: "a 2h blackhole against a 1h threshold, on virtual time: site 2 loses 1h"
clock: virtual
settings:
  extract_data_stuck_threshold: 1h
workload:
  rate: 600/h
  seed: 4242
steps:
  - at: 30m
    partition: [site1, site2]
    mode: blackhole
  - at: 2h30m
    heal: [site1, site2]
  - at: 2h30m
    settle: 1h
expect:
  loss:
    site1: 0
    site2: 1h
  duplicates: 0
  stuck: [site2]
"""


def test_a_virtual_clock_run_has_the_same_outcome_on_docker_and_local(
    engine, tmp_path: Path
) -> None:
    """Virtual time on containers: the same file loses the same event ids and meets the
    same stuck and return instants as on local processes, to the event and the second."""
    from test_virtual_time import outcome, run

    results = {}
    for backend in ("docker", "local"):
        out = tmp_path / f"out-{backend}"
        result = run(tmp_path, VIRTUAL_OUTAGE, backend, "--backend", backend, "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        results[backend] = outcome(out)
    lost, changes = results["docker"]
    assert 500 <= len(lost) <= 700  # about 1h of site 2's calls at 600/h
    assert all(event.startswith("site2-") for event in lost)
    assert [sites for _, sites in changes] == [(), ("site2",), ()]
    assert results["docker"] == results["local"]
