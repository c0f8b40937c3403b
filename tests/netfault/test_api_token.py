"""The proxy's API is not an open relay: with a run's token, a caller from beyond loopback
must present it; loopback keeps Toxiproxy's open surface for local clients."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netfault_support import REPO_ROOT, running_toxiproxy

from testbed.netfault.client import ToxiproxyClient
from testbed.netfault.http import TOKEN_ENV
from testbed.ports import free_port

TOKEN = "run-token-for-this-test"
HOST_SIDE, NS_SIDE = "169.254.213.1", "169.254.213.2"  # a link of the test's own


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace joined to this one by a veth pair: a caller that is not on the
    proxy's loopback, without sending a byte beyond this machine."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    name = f"bctb{os.getpid() % 100000}"
    host_if, ns_if = f"{name}h", f"{name}n"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{HOST_SIDE}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{NS_SIDE}/30", "dev", ns_if)
        _ip("netns", "exec", name, "ip", "link", "set", ns_if, "up")
        yield name
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", name)  # takes the veth pair with it
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)


@contextlib.contextmanager
def proxy_on(host: str, log: Path) -> Iterator[int]:
    """The proxy server with the run's token, its API on `host` only."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "testbed.netfault", "-host", host, "-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, TOKEN_ENV: TOKEN},
        )
    try:
        deadline = time.monotonic() + 20
        while b"listening" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


CALL = """\
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
headers = {"Authorization": "Bearer " + sys.argv[3]} if len(sys.argv) > 3 else {}
conn.request("POST", "/proxies", body=b'{"name": "relay", "listen": "127.0.0.1:0",'
             b' "upstream": "127.0.0.1:9"}', headers=headers)
response = conn.getresponse()
print(response.status, response.read().decode())
"""


def _call_from(namespace: str, port: int, *token: str) -> str:
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            namespace,
            sys.executable,
            "-c",
            CALL,
            HOST_SIDE,
            str(port),
            *token,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_caller_beyond_loopback_needs_the_token(namespace: str, tmp_path: Path) -> None:
    with proxy_on(HOST_SIDE, tmp_path / "proxy.log") as port:
        refused = _call_from(namespace, port)
        assert refused.startswith("401 "), refused
        assert '"error"' in refused  # Toxiproxy's error shape
        assert ToxiproxyClient(f"http://{HOST_SIDE}:{port}", token=TOKEN).proxies() == {}
        allowed = _call_from(namespace, port, TOKEN)
        assert allowed.startswith("201 "), allowed
        wrong = _call_from(namespace, port, "guess")
        assert wrong.startswith("401 "), wrong


def test_loopback_keeps_the_open_toxiproxy_surface(tmp_path: Path) -> None:
    with running_toxiproxy(tmp_path / "proxy.log", env={TOKEN_ENV: TOKEN}) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        conn.request("GET", "/proxies")
        assert conn.getresponse().status == 200
