"""The WAN proxy on the virtual clock, with real processes and sockets: a toxic holds bytes
until a scenario instant, the time jumps there, and a call through the proxy takes exactly
the scenario time the toxics say, however long the machine took."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.errors import TestbedError
from testbed.netfault.client import ToxiproxyClient, ToxiproxyError
from testbed.ports import free_port
from testbed.vclock.coordinator import Coordinator

PROXY = "caller-to-echo"
CALLER = """
import os, socket
from testbed.vclock.participant import VirtualClock
clock = VirtualClock(os.environ["TESTBED_CLOCK"].removeprefix("virtual:"), "caller", "icon")
out = open(OUT, "a", buffering=1)
peer = socket.create_connection(("127.0.0.1", PORT))
for size in SIZES:
    clock.sleep(60)
    began = clock.now()
    with clock.io("echo", "site1|site2", began + 600, lambda: peer.shutdown(2), VIA):
        peer.sendall(b"x" * size)
        got = 0
        while got < size and (chunk := peer.recv(65536)):
            got += len(chunk)
    out.write(f"{size} {began} {clock.now()} {got}\\n")
clock.sleep(10 ** 9)
"""


def echo_server() -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.fixture
def wan_proxy(tmp_path: Path) -> Iterator[ToxiproxyClient]:
    port = free_port()
    log = open(tmp_path / "proxy.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.netfault", "-host", "127.0.0.1", "-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = ToxiproxyClient(f"http://127.0.0.1:{port}")
    try:
        client.wait_until_ready(15)
        yield client
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def run_caller(
    coordinator: Coordinator,
    tmp_path: Path,
    port: int,
    sizes: list[int],
    via: str | None,
    wall_limit: float = 60.0,
    until: float | None = None,
) -> list[tuple[int, float, float, int]]:
    out = tmp_path / "caller.txt"
    code = f"OUT, PORT, SIZES, VIA = {str(out)!r}, {port}, {sizes!r}, {via!r}\n" + CALLER
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **coordinator.env()}
    )
    try:
        deadline = time.monotonic() + 20
        while "caller" not in coordinator.participants():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        coordinator.run_until(until or 60 * (len(sizes) + 1), wall_limit=wall_limit)
    finally:
        proc.kill()
        proc.wait(10)
    rows = [line.split() for line in out.read_text().splitlines()]
    return [(int(size), float(began), float(ended), int(got)) for size, began, ended, got in rows]


def test_toxics_hold_bytes_until_their_scenario_instant(
    tmp_path: Path, wan_proxy: ToxiproxyClient
) -> None:
    listener, echo_port = echo_server()
    with Coordinator(tmp_path / "clock") as coordinator:
        assert wan_proxy.attach_clock(str(coordinator.path)) == "virtual"
        proxy = wan_proxy.create_proxy(PROXY, f"127.0.0.1:{echo_port}")
        proxy.add_toxic("latency", stream="upstream", latency=500)
        proxy.add_toxic("latency", stream="downstream", latency=1500, name="slow_back")
        proxy.add_toxic("bandwidth", stream="downstream", rate=2)  # 2 KB per scenario second
        # Busy loops beside it: the outcome must not move with the machine's load.
        spin = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"
        loops = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
        try:
            calls = run_caller(coordinator, tmp_path, proxy.port, [10, 10_000], PROXY)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
        assert wan_proxy.attach_clock(None) == "wall"
    listener.close()
    # 0.5 s up, 1.5 s down, and 10 bytes take 5 ms of a 2 KB/s link; 10 KB take 5 s.
    assert calls == [(10, 60.0, 62.005, 10), (10_000, 122.005, 129.005, 10_000)]


def test_a_call_the_proxy_does_not_hold_holds_the_time(
    tmp_path: Path, wan_proxy: ToxiproxyClient
) -> None:
    """The same call without naming its proxy counts as running while its bytes wait: the
    clock never jumps to their release, and the run stalls (named) instead of lying."""
    listener, echo_port = echo_server()
    with Coordinator(tmp_path / "clock") as coordinator:
        wan_proxy.attach_clock(str(coordinator.path))
        proxy = wan_proxy.create_proxy(PROXY, f"127.0.0.1:{echo_port}")
        proxy.add_toxic("latency", latency=1500)
        with pytest.raises(TestbedError, match="stalled at t=60s: caller"):
            run_caller(coordinator, tmp_path, proxy.port, [10], None, wall_limit=3.0)
    listener.close()


def test_attaching_a_clock_is_refused_while_a_toxic_exists(
    tmp_path: Path, wan_proxy: ToxiproxyClient
) -> None:
    proxy = wan_proxy.create_proxy(PROXY, "127.0.0.1:9")
    proxy.add_toxic("latency", latency=100)
    with pytest.raises(ToxiproxyError, match="remove every toxic"):
        wan_proxy.attach_clock(str(tmp_path / "clock.sock"))
    proxy.delete()
    with pytest.raises(ToxiproxyError, match="cannot reach the run's clock"):
        wan_proxy.attach_clock(str(tmp_path / "nowhere.sock"))
    assert wan_proxy.attach_clock(None) == "wall"


def test_work_with_the_time_running_ends_when_its_last_byte_is_released(
    tmp_path: Path, wan_proxy: ToxiproxyClient
) -> None:
    """A procedure's copy across a slow link (`run_while`): the time runs while it works,
    jumps only while the proxy holds its bytes, and is held again the instant it ends."""
    listener, echo_port = echo_server()
    with Coordinator(tmp_path / "clock") as coordinator:
        wan_proxy.attach_clock(str(coordinator.path))
        proxy = wan_proxy.create_proxy(PROXY, f"127.0.0.1:{echo_port}")
        proxy.add_toxic("bandwidth", stream="downstream", rate=4)  # 4 KB per scenario second

        def copy() -> int:
            with socket.create_connection(("127.0.0.1", proxy.port)) as peer:
                peer.sendall(b"y" * 40_000)
                got = 0
                while got < 40_000:
                    time.sleep(0.001)  # a slow reader: wall time the clock must not count
                    got += len(peer.recv(4096))
                return got

        assert coordinator.run_while(copy, lambda held: PROXY not in held) == 40_000
        assert coordinator.now() == 10.0  # 40 KB at 4 KB/s, however slowly they were read
        wan_proxy.attach_clock(None)
    listener.close()


def test_a_toxic_that_swallows_bytes_lets_the_call_wait_for_its_deadline(
    tmp_path: Path, wan_proxy: ToxiproxyClient
) -> None:
    """A `timeout` toxic (a black hole the faults do not know of): the call through it can
    only end at its deadline, and the time jumps there instead of stalling."""
    listener, echo_port = echo_server()
    with Coordinator(tmp_path / "clock") as coordinator:
        wan_proxy.attach_clock(str(coordinator.path))
        proxy = wan_proxy.create_proxy(PROXY, f"127.0.0.1:{echo_port}")
        proxy.add_toxic("timeout", stream="upstream", timeout=0)
        calls = run_caller(coordinator, tmp_path, proxy.port, [10], PROXY, 20.0, until=700)
    listener.close()
    assert calls == [(10, 60.0, 660.0, 0)]  # cancelled at its deadline, 600 s on
