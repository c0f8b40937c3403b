"""What the testbed starts, it stops: a run, a benchmark and a test session stopped by
SIGTERM or SIGINT stop their servers and processes; after SIGKILL, `testbed down --all`
(from any folder) finds and stops what they left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testbed import procs

ROOT = Path(__file__).resolve().parent.parent
LONG_SCENARIO = str(ROOT / "scenarios" / "emergency-operation.yaml")
MARKERS = ("postgres", "testbed", "netfault")
SESSION = """
import time

def test_holds_a_topology(testbed_deployment):
    print("UP", flush=True)
    time.sleep(120)
"""


def ours() -> set[int]:
    """Processes that look like the testbed's: servers, components, proxies, runners."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            argv = " ".join(procs.cmdline(int(entry.name)))
            if any(marker in argv for marker in MARKERS) and procs.alive(int(entry.name)):
                found.add(int(entry.name))
    return found


def assert_nothing_left(before: set[int], what: str) -> None:
    deadline = time.monotonic() + 20
    while (left := ours() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    described = {pid: " ".join(procs.cmdline(pid))[:120] for pid in left}
    assert not left, f"{what} left running: {described}"


def start(args: list[str], tmp_path: Path, ready: str | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TESTBED_HOME": str(tmp_path / "home")},
    )
    assert proc.stdout is not None
    if ready is None:
        time.sleep(4)  # well into its work: servers and components up
    else:
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if ready in line or time.monotonic() > deadline:
                break
    assert proc.poll() is None, "it ended before it could be stopped"
    return proc


def entry_point(kind: str, tmp_path: Path) -> subprocess.Popen[str]:
    if kind == "run":
        return start([sys.executable, "-m", "testbed", "run", LONG_SCENARIO], tmp_path)
    if kind == "benchmark":
        return start([sys.executable, str(ROOT / "bench" / "proxy.py")], tmp_path)
    (tmp_path / "test_session.py").write_text(textwrap.dedent(SESSION))
    return start(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_session.py"],
        tmp_path,
        ready="UP",
    )


@pytest.mark.parametrize("kind", ["run", "benchmark", "session"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_entry_point_stops_what_it_started(
    tmp_path: Path, kind: str, sig: signal.Signals
) -> None:
    before = ours()
    proc = entry_point(kind, tmp_path)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert_nothing_left(before, f"{kind} stopped by {sig.name}")


@pytest.mark.parametrize("kind", ["run", "benchmark", "session"])
def test_down_all_from_anywhere_stops_what_a_killed_entry_point_left(
    tmp_path: Path, kind: str
) -> None:
    before = ours()
    proc = entry_point(kind, tmp_path)
    proc.kill()
    proc.communicate(timeout=30)
    assert ours() - before, "SIGKILL left nothing to find: the test proves nothing"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "testbed", "down", "--all"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TESTBED_HOME": str(elsewhere / "home")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert_nothing_left(before, f"{kind} killed, then `testbed down --all`")
