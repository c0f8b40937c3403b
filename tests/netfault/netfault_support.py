"""Helpers for the Toxiproxy conformance tests: the server under test as a subprocess, a
standard-library client for its HTTP API, loopback TCP servers to stand behind proxies, and
socket reads that are bounded in time so a broken server fails a test instead of hanging it.

Every address here is on the loopback interface: these tests never send traffic elsewhere.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
IO_TIMEOUT = 5.0  # the longest any single socket or HTTP operation may block
READY_TIMEOUT = 10.0  # how long the server may take to answer GET /version
REPO_ROOT = Path(__file__).resolve().parents[2]
PROXY_KEYS = {"name", "listen", "upstream", "enabled", "toxics"}
TOXIC_KEYS = {"attributes", "name", "type", "stream", "toxicity"}
_NO_BODY = object()


# --------------------------------------------------------------------------- HTTP API client


@dataclass
class Reply:
    """One HTTP answer, read whole, with how long the request took."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def error(self) -> str:
        """The `error` field of a Toxiproxy error body."""
        return self.json()["error"]

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:400]!r} in {self.elapsed * 1000:.0f} ms>"


class Api:
    """The Toxiproxy HTTP API over http.client: one connection per request, all bounded."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = _NO_BODY,
        *,
        raw: bytes | None = None,
        headers: dict[str, str | None] | None = None,
        timeout: float = IO_TIMEOUT,
    ) -> Reply:
        """`headers` override the defaults; a header given as None is not sent at all."""
        if raw is None and body is not _NO_BODY:
            raw = json.dumps(body).encode()
        sent: dict[str, str | None] = {"User-Agent": "netfault-conformance/1.0"}
        if raw is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        sent = {key: value for key, value in sent.items() if value is not None}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            start = time.monotonic()
            conn.request(method, path, body=raw, headers=sent)
            response = conn.getresponse()
            data = response.read()
            return Reply(response.status, response.headers, data, time.monotonic() - start)
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = _NO_BODY, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)

    def patch(self, path: str, body: Any = _NO_BODY, **kwargs: Any) -> Reply:
        return self.request("PATCH", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", path, **kwargs)

    # Shortcuts that assert success, for tests whose subject is something else.

    def proxies(self) -> dict[str, dict]:
        reply = self.get("/proxies")
        assert reply.status == 200, reply
        return reply.json()

    def proxy(self, name: str) -> dict:
        reply = self.get(f"/proxies/{name}")
        assert reply.status == 200, reply
        return reply.json()

    def create_proxy(
        self, name: str, upstream: str, listen: str = f"{LOOPBACK}:0", **extra: Any
    ) -> dict:
        reply = self.post(
            "/proxies", {"name": name, "listen": listen, "upstream": upstream, **extra}
        )
        assert reply.status == 201, reply
        return reply.json()

    def update_proxy(self, name: str, /, **fields: Any) -> dict:
        reply = self.post(f"/proxies/{name}", fields)
        assert reply.status == 200, reply
        return reply.json()

    def delete_proxy(self, name: str) -> None:
        reply = self.delete(f"/proxies/{name}")
        assert reply.status == 204, reply

    def toxics(self, proxy: str) -> list[dict]:
        reply = self.get(f"/proxies/{proxy}/toxics")
        assert reply.status == 200, reply
        return reply.json()

    def add_toxic(
        self,
        proxy: str,
        type_: str,
        *,
        stream: str | None = None,
        name: str | None = None,
        toxicity: float | None = None,
        **attributes: Any,
    ) -> dict:
        body: dict[str, Any] = {"type": type_, "attributes": attributes}
        for key, value in (("stream", stream), ("name", name), ("toxicity", toxicity)):
            if value is not None:
                body[key] = value
        reply = self.post(f"/proxies/{proxy}/toxics", body)
        assert reply.status == 200, reply
        return reply.json()

    def update_toxic(self, proxy: str, toxic: str, body: dict) -> dict:
        reply = self.post(f"/proxies/{proxy}/toxics/{toxic}", body)
        assert reply.status == 200, reply
        return reply.json()

    def remove_toxic(self, proxy: str, toxic: str) -> Reply:
        reply = self.delete(f"/proxies/{proxy}/toxics/{toxic}")
        assert reply.status == 204, reply
        return reply

    def delete_all_proxies(self) -> None:
        for name in self.proxies():
            reply = self.delete(f"/proxies/{name}")
            assert reply.status in (204, 404), reply


def listen_port(proxy: dict) -> int:
    """The port a proxy reports in its `listen` field."""
    return int(proxy["listen"].rsplit(":", 1)[1])


# --------------------------------------------------------------------------- server process


@dataclass
class ToxiproxyServer:
    """A running `python -m testbed.netfault` answering on `url`."""

    host: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api(self) -> Api:
        return Api(self.host, self.port)

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def server_command() -> list[str]:
    """`python -m testbed.netfault`, or the command in $NETFAULT_SERVER (for instance the real
    `toxiproxy-server`, to check this suite against the reference implementation)."""
    override = os.environ.get("NETFAULT_SERVER")
    return shlex.split(override) if override else [sys.executable, "-m", "testbed.netfault"]


@contextlib.contextmanager
def running_toxiproxy(
    log: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[ToxiproxyServer]:
    """Start the server on a free loopback port (`env` added to ours), wait for /version,
    always stop it."""
    port = free_port()
    command = [*server_command(), "-host", LOOPBACK, "-port", str(port)]
    with log.open("wb") as out:  # a file, not a pipe: a chatty server must never block on it
        process = subprocess.Popen(
            [*command, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=None if env is None else {**os.environ, **env},
        )
    server = ToxiproxyServer(LOOPBACK, port, process, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_ready(server: ToxiproxyServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"netfault exited with {server.process.returncode} before answering:\n"
                + server.log_tail()
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            if server.api.get("/version", timeout=1.0).status == 200:
                return
        time.sleep(0.05)
    raise AssertionError(
        f"netfault did not answer GET /version in {READY_TIMEOUT:.0f} s:\n" + server.log_tail()
    )


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A loopback port this test keeps bound and listening, so nobody else can bind it."""
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        yield holder.getsockname()[1]


# --------------------------------------------------------------------------- client side


def connect(port: int, timeout: float = IO_TIMEOUT) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def assert_refused(port: int) -> None:
    """Nothing listens on the port: connecting fails at once with ECONNREFUSED."""
    try:
        sock = socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT)
    except ConnectionRefusedError:
        return
    sock.close()
    raise AssertionError(f"port {port} accepted a connection; ECONNREFUSED expected")


def recv_exactly(sock: socket.socket, size: int, timeout: float = IO_TIMEOUT) -> bytes:
    """Exactly `size` bytes, failing on an early EOF or when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(data)} of {size} bytes in {timeout} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(size - len(data), 1 << 20))
        except TimeoutError:
            raise AssertionError(f"got {len(data)} of {size} bytes in {timeout} s") from None
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


@dataclass
class Ending:
    """How a connection ended as seen by a reader: 'eof', 'reset', or 'open' (timed out)."""

    how: str
    data: bytes
    elapsed: float


def read_to_end(sock: socket.socket, timeout: float) -> Ending:
    """Read until EOF, reset, or `timeout`; collect the data seen on the way."""
    start = time.monotonic()
    deadline = start + timeout
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Ending("open", bytes(data), time.monotonic() - start)
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            return Ending("open", bytes(data), time.monotonic() - start)
        except ConnectionResetError:
            return Ending("reset", bytes(data), time.monotonic() - start)
        if not chunk:
            return Ending("eof", bytes(data), time.monotonic() - start)
        data += chunk


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    """Seconds for `payload` to come back through an echo path."""
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start


def median_round_trip(sock: socket.socket, count: int = 5, payload: bytes = b"ping") -> float:
    return statistics.median(round_trip(sock, payload) for _ in range(count))


def pattern(size: int, seed: int = 7) -> bytes:
    """Reproducible bytes that reveal loss, duplication or reordering."""
    return random.Random(seed).randbytes(size)


class Background:
    """Run a function in a daemon thread; `result()` re-raises what it raised."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self._target = target
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._target()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = IO_TIMEOUT * 2) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background work did not finish in time"
        if self._error is not None:
            raise self._error
        return self._value


def send_in_background(
    sock: socket.socket,
    payload: bytes,
    *,
    piece: int | None = None,
    pause: float = 0.0,
    timeout: float = IO_TIMEOUT * 2,
) -> Background:
    """Write `payload` from another thread (in pieces, with pauses, if asked) through a
    duplicate of the socket: it has its own timeout, so a reader adjusting the socket's
    timeout cannot cut the write short, and the write still cannot block for ever."""
    writer = sock.dup()
    writer.settimeout(timeout)
    step = piece or len(payload) or 1

    def write() -> None:
        with writer:
            for offset in range(0, len(payload), step):
                writer.sendall(payload[offset : offset + step])
                if pause:
                    time.sleep(pause)

    return Background(write)


# --------------------------------------------------------------------------- loopback servers


@dataclass
class Peer:
    """The server side of one accepted connection, as recorded by a TcpServer."""

    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    reads: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, size)
    ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    how: str = "open"  # 'eof', 'reset', or 'closed' (we closed it)

    def recv(self, size: int = 1 << 16) -> bytes:
        """Read once and record; b'' on EOF or reset."""
        try:
            data = self.sock.recv(size)
        except ConnectionResetError:
            self.how = "reset"
            return b""
        if data:
            self.received += data
            self.reads.append((time.monotonic(), len(data)))
        else:
            self.how = "eof"
        return data

    def wait_ended(self, timeout: float = IO_TIMEOUT) -> bool:
        return self.ended.wait(timeout)

    def wait_received(self, size: int, timeout: float = IO_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.received) < size and time.monotonic() < deadline:
            if self.ended.is_set():
                break
            time.sleep(0.005)
        return bytes(self.received)


Handler = Callable[[Peer], None]


def echo(peer: Peer) -> None:
    """Send back everything, until EOF."""
    while data := peer.recv():
        peer.sock.sendall(data)


def sink(peer: Peer) -> None:
    """Read and record everything, answer nothing."""
    while peer.recv():
        pass


def source(payload: bytes, *, then_close: bool = True) -> Handler:
    """Send `payload` on accept, then close (or keep reading, like a sink)."""

    def handler(peer: Peer) -> None:
        peer.sock.sendall(payload)
        if then_close:
            peer.how = "closed"
            return
        sink(peer)

    return handler


class TcpServer:
    """A threaded loopback server running `handler` for each connection, one thread each."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.peers: list[Peer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(30.0)  # generous, yet bounded
            peer = Peer(sock)
            with self._lock:
                self.peers.append(peer)
            thread = threading.Thread(target=self._serve, args=(peer,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, peer: Peer) -> None:
        try:
            self.handler(peer)
        except ConnectionResetError:
            peer.how = "reset"
        except OSError:
            if peer.how == "open":
                peer.how = "error"
        finally:
            peer.ended_at = time.monotonic()
            peer.ended.set()
            with contextlib.suppress(OSError):
                peer.sock.close()

    def wait_for_peers(self, count: int, timeout: float = IO_TIMEOUT) -> list[Peer]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.peers) >= count:
                    return list(self.peers)
            time.sleep(0.005)
        raise AssertionError(f"{len(self.peers)} of {count} connections reached the upstream")

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the acceptor at once on Linux
        self.listener.close()
        self._acceptor.join(2)
        with self._lock:
            peers = list(self.peers)
        for peer in peers:
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(2)
