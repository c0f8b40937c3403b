"""The swarm node agent over real sockets, with a stand-in for the engine's API on a unix
socket (it only needs to say where a volume is): the token is required, files are read and
written inside the volume and never outside it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from testbed.backends.swarmtask import AgentClient, AgentError

REPO = Path(__file__).resolve().parents[1]


class _UnixHTTPServer(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)

    def get_request(self):
        request, _ = self.socket.accept()
        return request, ("engine", 0)


@pytest.fixture
def agent(tmp_path: Path):
    volume = tmp_path / "volumes" / "v1" / "_data"
    volume.mkdir(parents=True)

    class Engine(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/volumes/v1":
                body = json.dumps({"Mountpoint": str(volume)}).encode()
                self.send_response(200)
            else:
                body = b'{"message": "no such volume"}'
                self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    engine_socket = str(tmp_path / "engine.sock")
    engine = _UnixHTTPServer(engine_socket, Engine)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "testbed.backends.agent"],
        env={
            **os.environ,
            "AGENT_TOKEN": "secret",
            "AGENT_PORT": str(port),
            "AGENT_ENGINE_SOCKET": engine_socket,
        },
        cwd=REPO,
    )
    client = AgentClient(f"http://127.0.0.1:{port}", "secret")
    deadline = time.monotonic() + 10
    while not client.ping() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield client, volume, port
    process.terminate()
    process.wait(timeout=10)
    engine.shutdown()


def test_the_agent_reads_and_writes_files_on_a_volume(agent) -> None:
    client, volume, _ = agent
    assert client.read("v1", "status.json") is None  # missing: None, not an error
    client.write("v1", "supervise/env.json", b'{"PRIMARY": "wan-proxy:20004"}')
    assert json.loads((volume / "supervise" / "env.json").read_text()) == {
        "PRIMARY": "wan-proxy:20004"
    }
    assert client.read("v1", "supervise/env.json") == b'{"PRIMARY": "wan-proxy:20004"}'
    client.remove("v1", "supervise/env.json")
    assert not (volume / "supervise" / "env.json").exists()
    (volume / "data").mkdir()
    (volume / "data" / "PG_VERSION").write_text("15")
    client.clear("v1")
    assert list(volume.iterdir()) == []


def test_the_agent_refuses_a_wrong_token_and_paths_outside_the_volume(agent, tmp_path) -> None:
    client, volume, port = agent
    (tmp_path / "secret.txt").write_text("not yours")
    with pytest.raises(AgentError, match="token"):
        AgentClient(f"http://127.0.0.1:{port}", "guess").read("v1", "status.json")
    with pytest.raises(AgentError, match="outside the volume"):
        client.read("v1", "../../../secret.txt")
    with pytest.raises(AgentError, match="outside the volume"):
        client.write("v1", "../escape.txt", b"x")
    assert not (volume.parent / "escape.txt").exists()
    assert client.read("v2", "status.json") is None  # no such volume on this node
