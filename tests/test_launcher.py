"""Components forked from the warm fork server behave as freshly executed ones do, which
is what the run control, `testbed down` and the logs rely on: each test runs both ways."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import launcher, procs
from testbed.errors import TestbedError

PROBE = "launch_probe"


@pytest.fixture(params=["fork", "exec"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(launcher.LAUNCH_ENV, request.param)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # for the exec'd one
    assert launcher.launch_mode() == request.param
    yield request.param


def launch(tmp_path: Path, **config: object) -> tuple[launcher.Launched, Path, Path]:
    report = tmp_path / "report.json"
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"report": str(report), **config}))
    log = tmp_path / "process.log"
    return launcher.start(PROBE, [str(path)], dict(os.environ), log), report, log


def wait_for(path: Path) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.01)
    raise AssertionError(f"{path} never written")


def test_a_component_has_its_own_session_log_and_command_line(mode: str, tmp_path: Path) -> None:
    process, report, log = launch(tmp_path, sleep=30)
    try:
        # Its own session as soon as start() returns: a kill or pause of its group at once
        # reaches it (and nothing else).
        assert os.getsid(process.pid) == process.pid
        facts = wait_for(report)
        assert facts["pid"] == process.pid
        assert facts["pgid"] == facts["sid"] == process.pid  # signals reach its group alone
        config = str(tmp_path / "config.json")
        assert facts["argv"][1:] == [config]
        # What `testbed down` matches a recorded component by.
        assert procs.is_ours(process.pid, config)
        assert f"-m {PROBE} {config}" in " ".join(procs.cmdline(process.pid))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    text = log.read_text()
    assert "probe out" in text and "probe err" in text


def test_the_environment_is_the_one_given_at_start(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher.prewarm()  # a fork server started before the variable was set must not matter
    monkeypatch.setenv("LAUNCH_PROBE_VALUE", "set late")
    process, report, _ = launch(tmp_path, env_name="LAUNCH_PROBE_VALUE")
    assert process.wait(timeout=20) == 0
    assert wait_for(report)["env"] == "set late"


def test_the_exit_status_is_the_components(mode: str, tmp_path: Path) -> None:
    process, _, _ = launch(tmp_path, exit=3)
    assert process.wait(timeout=20) == 3
    assert process.poll() == 3


def test_threads_that_are_not_daemons_finish_before_it_exits(mode: str, tmp_path: Path) -> None:
    late = tmp_path / "late.txt"
    process, _, _ = launch(tmp_path, late_write=str(late))
    assert process.wait(timeout=20) == 0
    assert late.read_text() == "written after main returned"


def test_a_wait_that_runs_out_says_so(mode: str, tmp_path: Path) -> None:
    process, report, _ = launch(tmp_path, sleep=30)
    try:
        wait_for(report)
        with pytest.raises(Exception, match="timed out"):
            process.wait(timeout=0.1)
        assert process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_an_unknown_launch_mode_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(launcher.LAUNCH_ENV, "spawn")
    with pytest.raises(TestbedError, match="TESTBED_COMPONENT_LAUNCH=spawn is not one of"):
        launcher.launch_mode()


def test_the_command_line_fits_whatever_the_environment(tmp_path: Path) -> None:
    """A launcher in a bare environment (`env -i`, cron) leaves the fork server little room
    for its children's command lines; the whole of it must show, config path included."""
    folder = tmp_path / ("a-long-folder-name-" * 12)
    folder.mkdir()
    config = folder / "config.json"
    report = folder / "report.json"
    config.write_text(json.dumps({"report": str(report)}))
    log = tmp_path / "log"
    script = (
        "import os; from pathlib import Path; from testbed import launcher\n"
        f"p = launcher.start({PROBE!r}, [{str(config)!r}], dict(os.environ), Path({str(log)!r}))\n"
        "assert p.wait(timeout=20) == 0\n"
    )
    probe_dir = str(Path(__file__).parent)
    repo = str(Path(__file__).parent.parent)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{repo}:{probe_dir}"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    facts = wait_for(report)
    assert facts["argv"][1:] == [str(config)]
    assert "shortened" not in log.read_text()
