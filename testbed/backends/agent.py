"""The node agent: a global swarm service, one task per node, with that node's engine socket.

Why it exists: a swarm manager's API schedules tasks anywhere, but it cannot signal, pause or
read the files of a container on another node. Faults must act on the task's own process
wherever it runs, and ledgers, queues and status files must come back for the verdict. So
each node runs this small HTTP service (host network, standard library only, a bearer token
per run), and the testbed talks to the agent of the node a task runs on.

    GET  /containers?run=ID                  the node's containers of that run, with state
    POST /containers/ID/signal?signal=SIG    a signal to the container's PID 1 (the supervisor)
    POST /containers/ID/pause | /unpause     the cgroup freezer, as `docker pause`
    GET  /volumes/NAME/file?path=P           a file on a named volume (404 if missing)
    PUT  /volumes/NAME/file?path=P           write it (atomically)
    DELETE /volumes/NAME/file?path=P         remove it
    POST /volumes/NAME/clear                 delete everything on the volume

Volumes are read through their mount point, which the service mounts from the node at the
same path (the engine's volumes folder).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENGINE_SOCKET = os.environ.get("AGENT_ENGINE_SOCKET", "/var/run/docker.sock")
RUN_LABEL = "bc-testbed.run"
DEFAULT_PORT = 18474


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def engine(method: str, path: str, socket_path: str = ENGINE_SOCKET) -> tuple[int, Any]:
    """One call to the local engine's API: (status, decoded JSON or None)."""
    conn = _UnixConnection(socket_path)
    try:
        conn.request(method, path, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(body) if body else None
    except ValueError:
        return response.status, body.decode(errors="replace")


_MOUNTPOINTS: dict[str, Path] = {}


def _volume_root(name: str) -> Path:
    """A volume's folder on this node; remembered, since the testbed polls status files
    many times a second and a volume does not move while it exists."""
    known = _MOUNTPOINTS.get(name)
    if known is not None and known.is_dir():
        return known
    status, info = engine("GET", f"/volumes/{urllib.parse.quote(name)}")
    if status != 200:
        raise FileNotFoundError(f"no volume {name} on this node")
    _MOUNTPOINTS[name] = Path(info["Mountpoint"])
    return _MOUNTPOINTS[name]


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative.lstrip("/")).resolve()
    if root.resolve() not in (path, *path.parents):
        raise PermissionError(f"{relative} is outside the volume")
    return path


class Handler(BaseHTTPRequestHandler):
    token = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:  # quiet: the testbed polls often
        pass

    def _reply(self, status: int, body: bytes | Any = b"", kind: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._reply(401, {"error": "missing or wrong token"})
            return
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        try:
            self._dispatch(method, parts, query)
        except FileNotFoundError as exc:
            self._reply(404, {"error": str(exc)})
        except PermissionError as exc:
            self._reply(403, {"error": str(exc)})
        except Exception as exc:  # the agent must answer, whatever went wrong
            self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _dispatch(self, method: str, parts: list[str], query: dict[str, str]) -> None:
        if method == "GET" and parts == ["containers"]:
            label = f"{RUN_LABEL}={query['run']}" if query.get("run") else RUN_LABEL
            filters = urllib.parse.quote(json.dumps({"label": [label]}))
            status, found = engine("GET", f"/containers/json?all=1&filters={filters}")
            rows = [
                {
                    "id": c["Id"],
                    "service": c["Labels"].get("com.docker.swarm.service.name"),
                    "state": c["State"],
                }
                for c in found or []
            ]
            self._reply(status, rows)
        elif method == "POST" and len(parts) == 3 and parts[0] == "containers":
            cid, verb = parts[1], parts[2]
            if verb == "signal":
                path = f"/containers/{cid}/kill?signal={query.get('signal', 'SIGKILL')}"
            elif verb in ("pause", "unpause"):
                path = f"/containers/{cid}/{verb}"
            else:
                raise FileNotFoundError(f"no verb {verb}")
            status, answer = engine("POST", path)
            self._reply(status, answer if status >= 300 else {"ok": True})
        elif len(parts) >= 3 and parts[0] == "volumes":
            root = _volume_root(parts[1])
            if method == "POST" and parts[2] == "clear":
                for entry in root.iterdir():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                self._reply(200, {"ok": True})
                return
            target = _inside(root, query.get("path", ""))
            if method == "GET":
                self._reply(200, target.read_bytes(), "application/octet-stream")
            elif method == "PUT":
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
                self._reply(200, {"ok": True})
            elif method == "DELETE":
                target.unlink(missing_ok=True)
                self._reply(200, {"ok": True})
            else:
                raise FileNotFoundError(self.path)
        elif method == "GET" and parts == ["ping"]:
            self._reply(200, {"ok": True})
        else:
            raise FileNotFoundError(self.path)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")


def main() -> int:
    token = os.environ.get("AGENT_TOKEN", "")
    if not token:
        print("error: AGENT_TOKEN is not set", file=sys.stderr)
        return 2
    bind = os.environ.get("AGENT_BIND", "127.0.0.1")
    port = int(os.environ.get("AGENT_PORT", str(DEFAULT_PORT)))
    Handler.token = token
    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
