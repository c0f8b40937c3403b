"""The `testbed` command end to end, as a user runs it: real processes, real servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from testbed import credentials, procs


def run_cli(*args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def home(tmp_path: Path):
    yield tmp_path / "home"
    run_cli("down", "--all", home=tmp_path / "home")  # never leave a server behind


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _running_servers(home: Path) -> list[dict]:
    report = json.loads(run_cli("status", "--json", home=home).stdout)
    return [s for run in report for s in run["servers"] if s["state"] == "running"]


def test_up_detach_json_then_down(home: Path) -> None:
    result = run_cli("up", "--detach", "--json", home=home)
    assert result.returncode == 0, result.stderr
    servers = json.loads(result.stdout)
    assert len(servers) >= 4
    assert {s["site"] for s in servers} == {"site1", "site2"}
    for server in servers:
        assert set(server) == {"site", "role", "name", "host", "port", "pid", "dsn", "passfile"}
        with psycopg.connect(server["dsn"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # The password is in the file the DSN names, and nowhere in what was printed.
        assert "password" not in server["dsn"]
        assert credentials.read_password(Path(server["passfile"])) not in result.stdout
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(
                host=server["host"], port=server["port"], user="postgres", passfile="/dev/null"
            ).close()
    assert len(_running_servers(home)) == len(servers)

    down = run_cli("down", home=home)
    assert down.returncode == 0, down.stderr
    assert not [s for s in servers if procs.alive(s["pid"])]
    assert not list((home / "runs").iterdir())


def test_up_once_starts_checks_and_stops(home: Path) -> None:
    result = run_cli("up", "--once", home=home)
    assert result.returncode == 0, result.stderr
    assert "infomart2" in result.stdout and "standby of infomart1" in result.stdout
    assert "all 4 servers answered" in result.stderr
    assert not list((home / "runs").iterdir())


def test_a_bad_topology_file_is_one_line_and_exit_2(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [site1]\nservers:\n  idb1: {site: site1, role: db}\n")
    _assert_one_line_error(
        run_cli("up", "--topology", str(bad), home=home), f"{bad}, line 3", "servers.idb1.role"
    )


def test_missing_binaries_are_one_line_and_exit_2(home: Path) -> None:
    result = run_cli("up", "--once", home=home, env={"TESTBED_PG_BIN": "/nonexistent"})
    _assert_one_line_error(result, "TESTBED_PG_BIN=/nonexistent")


def test_a_port_conflict_is_one_line_and_exit_2_and_leaves_nothing(
    home: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        topo = tmp_path / "fixed.yaml"
        topo.write_text(
            "sites: [site1]\nservers:\n"
            "  idb1: {site: site1, role: idb}\n"
            f"  idb2: {{site: site1, role: idb, port: {port}}}\n"
        )
        result = run_cli("up", "--once", "--topology", str(topo), home=home)
    _assert_one_line_error(result, f"port {port}", "in use")
    assert not _running_servers(home)
    assert not list((home / "runs").iterdir())


def test_contradicting_flags_and_unknown_runs_are_refused(home: Path) -> None:
    _assert_one_line_error(run_cli("up", "--detach", "--once", home=home), "--detach")
    _assert_one_line_error(run_cli("down", "nosuchrun", home=home), "no run 'nosuchrun'")


def _start_up(home: Path) -> subprocess.Popen:
    """`testbed up` in its own session, its output in a file (a pipe nobody reads could
    fill and block it, which would look like a hang of the command under test)."""
    log = (home.parent / "up.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed", "up", "--home", str(home)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while len(_running_servers(home)) < 4:
        assert proc.poll() is None, _output(home)
        assert time.monotonic() < deadline, "servers did not come up"
        time.sleep(0.2)
    return proc


def _output(home: Path) -> str:
    return (home.parent / "up.log").read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_up_stops_every_server(home: Path, sig: signal.Signals) -> None:
    proc = _start_up(home)
    pids = [s["pid"] for s in _running_servers(home)]
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    try:
        assert proc.wait(timeout=60) == 130, _output(home)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"testbed up did not stop within 60 s of {sig.name}:\n{_output(home)}")
    assert not [pid for pid in pids if procs.alive(pid)]
    assert not list((home / "runs").iterdir())


def test_down_stops_the_servers_of_a_crashed_runner(home: Path) -> None:
    proc = _start_up(home)
    pids = [s["pid"] for s in _running_servers(home)]
    proc.kill()  # SIGKILL: the runner gets no chance to clean up
    proc.wait(timeout=10)
    assert all(procs.alive(pid) for pid in pids)
    status = json.loads(run_cli("status", "--json", home=home).stdout)
    assert status[0]["runner_alive"] is False

    down = run_cli("down", home=home)
    assert down.returncode == 0, down.stderr
    assert "stopped 4 server(s)" in down.stderr
    assert not [pid for pid in pids if procs.alive(pid)]


def test_dr_promote_on_a_healthy_primary_is_refused_in_one_line(home: Path) -> None:
    assert run_cli("up", "--detach", home=home).returncode == 0
    result = run_cli("dr", "promote", "site2", home=home)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "promote site2 refused" in lines[0] and "infomart1" in lines[0]


def test_dr_procedures_chain_on_a_detached_run(home: Path) -> None:
    assert run_cli("up", "--detach", home=home).returncode == 0
    steps = [
        ("fail-site", "site1"),
        ("promote", "site2"),
        ("add-site", "site3"),
        ("transfer", "--from", "site2", "--to", "site3"),
        ("switchover", "--to", "site3"),
    ]
    for step in steps:
        result = run_cli("dr", *step, "--json", home=home)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["procedure"] == step[0]
    running = {s["name"] for s in _running_servers(home)}
    assert running == {"idb2", "infomart2", "idb3", "infomart3"}
    infomart2 = next(s for s in _running_servers(home) if s["name"] == "infomart2")
    standby = psycopg.connect(
        host="127.0.0.1",
        port=infomart2["port"],
        user="postgres",
        dbname="postgres",
        passfile=infomart2["passfile"],
    )
    with standby:
        assert standby.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True


def test_dr_recovers_a_lost_site_under_its_own_name_on_a_detached_run(home: Path) -> None:
    """The documented "recovered Site 1": back on its old disks, Info Mart 1 refused as a
    primary until rewound to Info Mart 2's timeline, then site 1 active again."""
    assert run_cli("up", "--detach", home=home).returncode == 0
    for step in [("fail-site", "site1"), ("promote", "site2")]:
        assert run_cli("dr", *step, home=home).returncode == 0
    recovered = run_cli("dr", "recover-site", "site1", "--disks", "kept", "--json", home=home)
    assert recovered.returncode == 0, recovered.stderr
    assert json.loads(recovered.stdout)["left_behind"] == {"infomart1": "infomart2"}
    again = run_cli("dr", "recover-site", "site1", home=home)
    assert again.returncode == 1 and "site1 has not failed" in again.stderr
    rewound = run_cli(
        "dr",
        "transfer",
        "--from",
        "site2",
        "--to",
        "site1",
        "--method",
        "rewind",
        "--json",
        home=home,
    )
    assert rewound.returncode == 0, rewound.stderr
    assert json.loads(rewound.stdout)["method"] == "rewind"
    assert run_cli("dr", "switchover", "--to", "site1", home=home).returncode == 0
    running = {s["name"] for s in _running_servers(home)}
    assert running == {"idb1", "infomart1", "idb2", "infomart2"}
