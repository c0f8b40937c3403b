"""The testbed as a Chaos Toolkit extension, run by the real `chaos` command on real servers:
the example experiment holds its hypothesis ("no unexplained loss") across an 11 h WAN
outage and leaves nothing running; the same hypothesis fails when facts vanish behind the
testbed's back; bad input fails an activity in one line. And the third-party Toxiproxy
extension (chaostoolkit-toxiproxy, module `chaostoxi`) drives our proxy unchanged, as our
own client and real traffic through the proxy see it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.backends.local import LocalBackend
from testbed.backends.runs import list_runs
from testbed.history import of_kind, read_history
from testbed.netfault.client import ToxiproxyClient

REPO = Path(__file__).resolve().parents[1]
CHAOS = Path(sys.executable).with_name("chaos")
EXAMPLE = REPO / "examples" / "wan-outage-long.json"
CHAOS_TIMEOUT_S = 240.0
TESTBED = "testbed.chaostoolkit"
SUPPORT = "chaostoolkit_support"  # the tests' own activities, next to this file


@dataclass
class ChaosRun:
    """One `chaos run`: its exit code, console output, journal, and working folder."""

    returncode: int
    output: str
    journal: dict[str, Any]
    folder: Path

    def activity(self, name: str) -> dict[str, Any]:
        return next(r for r in self.journal["run"] if r["activity"]["name"] == name)

    def output_of(self, name: str) -> Any:
        run = self.activity(name)
        assert run["status"] == "succeeded", run
        return run["output"]

    @property
    def run_folder(self) -> Path:
        """The testbed's run folder (history and reports) under the working folder."""
        (folder,) = (self.folder / ".testbed" / "reports").iterdir()
        return folder


def chaos_command(
    experiment: Path | dict[str, Any], folder: Path
) -> tuple[list[str], dict[str, str]]:
    """`chaos run` of the experiment (written to `folder` if given as data) with its
    settings, log, journal and the testbed's runs kept in `folder`, and the environment
    that makes this folder's support module importable."""
    if isinstance(experiment, dict):
        path = folder / "experiment.json"
        path.write_text(json.dumps(experiment, indent=2))
        experiment = path
    argv = [
        str(CHAOS),
        "--no-version-check",
        "--settings",
        str(folder / "settings.yaml"),
        "--log-file",
        str(folder / "chaostoolkit.log"),
        "run",
        "--journal-path",
        str(folder / "journal.json"),
        str(experiment),
    ]
    paths = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "TESTBED_HOME": str(folder / "home"), "PYTHONPATH": os.pathsep.join(paths)}
    return argv, env


def chaos_run(experiment: Path | dict[str, Any], folder: Path) -> ChaosRun:
    argv, env = chaos_command(experiment, folder)
    result = subprocess.run(
        argv, cwd=folder, env=env, capture_output=True, text=True, timeout=CHAOS_TIMEOUT_S
    )
    return finished(result.returncode, result.stdout + result.stderr, folder)


def finished(returncode: int, output: str, folder: Path) -> ChaosRun:
    journal = folder / "journal.json"
    return ChaosRun(
        returncode, output, json.loads(journal.read_text()) if journal.exists() else {}, folder
    )


def with_control(title: str, method: list[dict[str, Any]], **arguments: Any) -> dict[str, Any]:
    """An experiment on a testbed environment (the control given `arguments`)."""
    return {
        "version": "1.0.0",
        "title": title,
        "description": title,
        "controls": [
            {
                "name": "testbed",
                "provider": {
                    "type": "python",
                    "module": f"{TESTBED}.control",
                    "arguments": arguments,
                },
            }
        ],
        "method": method,
    }


def python(module: str, func: str, /, **arguments: Any) -> dict[str, Any]:
    provider: dict[str, Any] = {"type": "python", "module": module, "func": func}
    if arguments:
        provider["arguments"] = arguments
    return provider


def action(name: str, module: str, func: str, /, **arguments: Any) -> dict[str, Any]:
    return {"type": "action", "name": name, "provider": python(module, func, **arguments)}


def probe(name: str, module: str, func: str, /, **arguments: Any) -> dict[str, Any]:
    return {"type": "probe", "name": name, "provider": python(module, func, **arguments)}


def assert_nothing_left_running(run: ChaosRun) -> None:
    """The run's teardown found nothing left, no process of the run is alive, and the
    run's record is gone (it goes once its servers are stopped)."""
    history = read_history(run.run_folder / "history.jsonl")
    run_id = next(of_kind(history, "live-run"))["run"]
    assert next(of_kind(history, "teardown"))["leftover_pids"] == []
    servers = next(of_kind(history, "topology"))["servers"]
    assert [s["name"] for s in servers if procs.alive(s["pid"])] == []
    left = [
        " ".join(argv)
        for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
        if run_id in " ".join(argv := procs.cmdline(pid)) and procs.alive(pid)
    ]
    assert left == []
    assert list_runs(run.folder / "home") == []


# --- the testbed as an extension --------------------------------------------------------


def steps_taken(run: ChaosRun) -> list[tuple[float, str, Any]]:
    """(scenario time, verb, value) of every step the run's history recorded."""
    history = read_history(run.run_folder / "history.jsonl")
    return [(e["t"], e["step"]["verb"], e["step"]["value"]) for e in of_kind(history, "step")]


def test_the_example_holds_no_unexplained_loss_across_an_11h_outage(tmp_path: Path) -> None:
    run = chaos_run(EXAMPLE, tmp_path)
    assert run.returncode == 0, run.output
    journal = run.journal
    assert (journal["status"], journal["deviated"]) == ("completed", False)
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    assert journal["steady_states"]["after"]["steady_state_met"] is True
    assert run.output_of("site2-is-stuck") == ["site2"]
    # On the virtual clock the outage lasts 11 h exactly, however busy the machine: the
    # heal comes 11 h after the cut, and about 3 h of site 2 at 600/h is lost.
    steps = steps_taken(run)
    cut, heal = [t for t, verb, _ in steps if verb in ("partition", "heal")][:2]
    assert heal - cut == 11 * 3600, steps
    lost = run.output_of("site2-events-lost")
    assert 1600 < lost < 2000, steps
    report = json.loads((run.run_folder / "report.json").read_text())
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    assert report["figures"]["lost_events"]["site2"] == lost  # the probe saw the final loss
    assert [r["status"] for r in journal["rollbacks"]] == ["succeeded"]
    assert_nothing_left_running(run)


def test_on_the_virtual_clock_time_moves_only_while_an_activity_lets_it(tmp_path: Path) -> None:
    """A Chaos Toolkit pause is wall time: on the virtual clock the run is held meanwhile,
    so the cut lands where the first wait ended and the second wait adds exactly 30m."""
    cut = action("cut-the-wan", f"{TESTBED}.actions", "partition", link=["site1", "site2"])
    experiment = with_control(
        "time held between activities",
        [
            action("half-an-hour", f"{TESTBED}.actions", "wait", duration="30m"),
            {**cut, "pauses": {"before": 1, "after": 1}},
            probe("now", f"{TESTBED}.probes", "environment"),
            action("another-half-hour", f"{TESTBED}.actions", "wait", duration="30m"),
            action("heal-the-wan", f"{TESTBED}.actions", "heal", link=["site1", "site2"]),
        ],
        seed=3,
        clock="virtual",
        settings={"extract_data_stuck_threshold": "8h"},
    )
    run = chaos_run(experiment, tmp_path)
    assert run.returncode == 0, run.output
    first = run.output_of("half-an-hour")
    assert run.output_of("cut-the-wan")["at"] == first
    assert run.output_of("now")["scenario_time"] == first
    assert run.output_of("another-half-hour") == first + 1800
    history = read_history(run.run_folder / "history.jsonl")
    assert next(of_kind(history, "run"))["clock"] == "virtual"
    report = json.loads((run.run_folder / "report.json").read_text())
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    assert_nothing_left_running(run)


def test_the_hypothesis_fails_when_facts_vanish_and_bad_input_fails_in_one_line(
    tmp_path: Path,
) -> None:
    experiment = with_control(
        "facts vanish behind the testbed's back",
        [
            action("run-for-1h", f"{TESTBED}.actions", "wait", duration="1h"),
            action("caught-up", f"{TESTBED}.actions", "settle", within="1h"),
            action("five-facts-vanish", SUPPORT, "delete_facts", count=5),
            probe("unexplained", f"{TESTBED}.probes", "unexplained_loss"),
            action("kill-an-unknown-icon", f"{TESTBED}.actions", "kill", target="icon9"),
            action(
                "cut-a-link-to-nowhere", f"{TESTBED}.actions", "partition", link=["site1", "site9"]
            ),
        ],
        seed=3,
        settings={"extract_data_stuck_threshold": "8h"},
    )
    experiment["steady-state-hypothesis"] = {
        "title": "no unexplained loss",
        "probes": [
            {
                **probe("loss-as-predicted", f"{TESTBED}.probes", "loss_as_predicted"),
                "tolerance": True,
            }
        ],
    }
    experiment["rollbacks"] = [action("heal", f"{TESTBED}.actions", "heal")]
    run = chaos_run(experiment, tmp_path)
    assert run.returncode == 1, run.output
    journal = run.journal
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    assert journal["deviated"] is True
    after = journal["steady_states"]["after"]
    assert after["steady_state_met"] is False
    assert [(p["output"], p["tolerance_met"]) for p in after["probes"]] == [(False, False)]
    assert len(run.output_of("five-facts-vanish")) == 5
    assert run.output_of("unexplained") == 5

    for name, expected in (
        ("kill-an-unknown-icon", "kill: unknown target 'icon9' (targets: icon1a,"),
        ("cut-a-link-to-nowhere", "partition: unknown site 'site9' (sites: site1, site2)"),
    ):
        failed = run.activity(name)
        assert failed["status"] == "failed"
        trace = "".join(failed["exception"])
        assert expected in trace
        assert "testbed/scenarios" not in trace and "testbed/pipeline" not in trace, trace

    report = json.loads((run.run_folder / "report.json").read_text())
    (loss,) = [c for c in report["checks"] if c["name"] == "loss"]
    assert not loss["passed"] and loss["figures"]["unpredicted"] == 5
    assert_nothing_left_running(run)


def test_a_mistake_in_the_control_stops_chaos_run_before_anything_starts(
    tmp_path: Path,
) -> None:
    experiment = with_control(
        "a clock too fast to judge",  # at 1h = 1ms the tolerance would swallow the threshold
        [action("wait", f"{TESTBED}.actions", "wait", duration="1h")],
        clock="1h = 1ms",
    )
    run = chaos_run(experiment, tmp_path)
    assert run.returncode == 1
    assert "control 'testbed': testbed environment: clock: at this clock" in run.output
    assert not (tmp_path / "home").exists()


def test_an_interrupted_experiment_still_stops_every_server(tmp_path: Path) -> None:
    experiment = with_control(
        "interrupted", [action("a-long-day", f"{TESTBED}.actions", "wait", duration="1d")]
    )
    argv, env = chaos_command(experiment, tmp_path)
    log = tmp_path / "chaostoolkit.log"
    with (tmp_path / "output").open("w+") as output:
        process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=output, stderr=output)
        try:
            deadline = time.monotonic() + CHAOS_TIMEOUT_S
            while "Action: a-long-day" not in (log.read_text() if log.exists() else ""):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=CHAOS_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output.seek(0)
        run = finished(process.returncode, output.read(), tmp_path)
    assert run.journal["status"] == "interrupted", run.output
    assert not (run.run_folder / "report.json").exists()  # stopped at once, not judged
    assert_nothing_left_running(run)


# --- chaostoolkit-toxiproxy against our proxy -------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A loopback echo server to stand behind a proxy; its port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def our_proxy_server(home: Path) -> Iterator[int]:
    """Our Toxiproxy-compatible server, as a run starts it; its port. Always stopped."""
    with LocalBackend(home=home) as backend:
        yield backend.start_proxy().port


def test_chaostoolkit_toxiproxy_drives_our_proxy(tmp_path: Path) -> None:
    proxy, toxic = "chaostoxi.proxy", "chaostoxi.toxic"
    with echo_server() as echo, our_proxy_server(tmp_path / "home") as port:
        url = f"http://127.0.0.1:{port}"
        seen = {"url": url, "name": "echo"}  # our side: our client, real traffic
        experiment = {
            "version": "1.0.0",
            "title": "chaostoolkit-toxiproxy against the testbed's proxy",
            "description": "Every call of the extension, checked from our side.",
            "configuration": {"toxiproxy_host": "127.0.0.1", "toxiproxy_port": port},
            "method": [
                action(
                    "create",
                    f"{proxy}.actions",
                    "create_proxy",
                    proxy_name="echo",
                    upstream_host="127.0.0.1",
                    upstream_port=echo,
                    listen_host="127.0.0.1",
                    listen_port=0,
                ),
                probe("exists", f"{proxy}.probes", "proxy_exist", proxy_name="echo"),
                probe("created", SUPPORT, "proxy_state", **seen),
                probe("clean-round-trip", SUPPORT, "round_trip_ms", **seen),
                action(
                    "add-latency",
                    f"{toxic}.actions",
                    "create_latency_toxic",
                    for_proxy="echo",
                    toxic_name="wan-latency",
                    latency=300,
                ),
                action(
                    "add-bandwidth",
                    f"{toxic}.actions",
                    "create_bandwith_degradation_toxic",
                    for_proxy="echo",
                    toxic_name="wan-bandwidth",
                    rate=500,
                ),
                action(
                    "add-a-refused-toxic",
                    f"{toxic}.actions",
                    "create_toxic",
                    for_proxy="echo",
                    toxic_name="negative",
                    toxic_type="latency",
                    attributes={"latency": -1},
                ),
                probe(
                    "their-toxics",
                    f"{proxy}.probes",
                    "get_proxy_attribute",
                    proxy_name="echo",
                    attribute="toxics",
                ),
                probe("our-toxics", SUPPORT, "proxy_state", **seen),
                probe("slow-round-trip", SUPPORT, "round_trip_ms", **seen),
                action(
                    "remove-latency",
                    f"{toxic}.actions",
                    "delete_toxic",
                    for_proxy="echo",
                    toxic_name="wan-latency",
                ),
                probe("fast-again", SUPPORT, "round_trip_ms", **seen),
                action(
                    "re-point",
                    f"{proxy}.actions",
                    "modify_proxy",
                    proxy_name="echo",
                    upstream_address=f"localhost:{echo}",
                ),
                probe("re-pointed", SUPPORT, "proxy_state", **seen),
                action("disable", f"{proxy}.actions", "disable_proxy", proxy_name="echo"),
                probe("refused", SUPPORT, "refuses_connections", **seen),
                action("enable", f"{proxy}.actions", "enable_proxy", proxy_name="echo"),
                probe("enabled-round-trip", SUPPORT, "round_trip_ms", **seen),
                action(
                    "add-slicer",
                    f"{toxic}.actions",
                    "create_slicer_toxic",
                    for_proxy="echo",
                    toxic_name="slicer",
                    average_size=64,
                    size_variation=16,
                    delay=10,
                ),
                action(
                    "add-timeout",
                    f"{toxic}.actions",
                    "create_timeout_toxic",
                    for_proxy="echo",
                    toxic_name="timeout",
                    timeout=5000,
                ),
                action(
                    "add-slow-close",
                    f"{toxic}.actions",
                    "create_slow_connection_close_toxic",
                    for_proxy="echo",
                    toxic_name="slow-close",
                    delay=100,
                ),
                action(
                    "add-limiter",
                    f"{toxic}.actions",
                    "create_limiter_toxic",
                    for_proxy="echo",
                    toxic_name="limiter",
                    bytes_limit=1000000,
                ),
                probe("more-toxics", SUPPORT, "proxy_state", **seen),
                action("reset", f"{proxy}.actions", "reset"),
                probe("after-reset", SUPPORT, "proxy_state", **seen),
                action("delete", f"{proxy}.actions", "delete_proxy", proxy_name="echo"),
                probe("gone", f"{proxy}.probes", "proxy_exist", proxy_name="echo"),
                probe("gone-for-us", SUPPORT, "proxy_state", **seen),
            ],
        }
        run = chaos_run(experiment, tmp_path)
        assert ToxiproxyClient(url).proxies() == {}

    assert run.journal["status"] == "completed", run.output
    assert run.output_of("create") is True
    assert run.output_of("exists") is True
    created = run.output_of("created")
    assert created["enabled"] is True and created["toxics"] == {}
    assert not created["listen"].endswith(":0")  # the port the proxy really listens on
    assert run.output_of("clean-round-trip") < 150

    assert run.output_of("add-latency") is True
    assert run.output_of("add-bandwidth") is True
    # Our proxy refuses a negative latency (400); chaostoxi then fails the action (with a
    # TypeError of its own, not the server's reason), and no toxic is added.
    assert run.activity("add-a-refused-toxic")["status"] == "failed"
    assert {t["name"] for t in run.output_of("their-toxics")} == {"wan-latency", "wan-bandwidth"}
    assert run.output_of("our-toxics")["toxics"] == {
        "wan-latency": {
            "type": "latency",
            "stream": "downstream",
            "attributes": {"latency": 300, "jitter": 0},
        },
        "wan-bandwidth": {"type": "bandwidth", "stream": "downstream", "attributes": {"rate": 500}},
    }
    assert run.output_of("slow-round-trip") >= 290  # the echo comes back 300 ms late

    assert run.output_of("remove-latency") is True
    assert run.output_of("fast-again") < 150
    assert run.output_of("re-point") is True
    assert run.output_of("re-pointed")["upstream"] == f"localhost:{echo}"
    assert run.output_of("disable") is True
    assert run.output_of("refused") is True
    assert run.output_of("enable") is True
    assert run.output_of("enabled-round-trip") < 150
    assert {
        name: (t["type"], t["attributes"])
        for name, t in run.output_of("more-toxics")["toxics"].items()
        if name != "wan-bandwidth"
    } == {
        "slicer": ("slicer", {"average_size": 64, "size_variation": 16, "delay": 10}),
        "timeout": ("timeout", {"timeout": 5000}),
        "slow-close": ("slow_close", {"delay": 100}),
        "limiter": ("limit_data", {"bytes": 1000000}),
    }
    assert run.output_of("reset") is True
    assert run.output_of("after-reset")["toxics"] == {}
    assert run.output_of("gone") is False
    assert run.output_of("gone-for-us") is None
