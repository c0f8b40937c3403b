"""The API client: the server's own error messages come through; a missing server is one
clear line; the run's proxy process leaves nothing behind."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from testbed import procs
from testbed.backends.local import LocalBackend
from testbed.netfault.client import ProxyUnavailable, ToxiproxyClient, ToxiproxyError


@pytest.fixture
def client(testbed_backend: LocalBackend) -> ToxiproxyClient:
    return testbed_backend.start_proxy()


@pytest.fixture
def echo_port() -> int:
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_api_errors_carry_the_server_message_and_status(client: ToxiproxyClient) -> None:
    with pytest.raises(ToxiproxyError) as info:
        client.proxy("nosuch")
    assert (info.value.status, info.value.message) == (404, "proxy not found")
    proxy = client.create_proxy("p", upstream="127.0.0.1:9")
    with pytest.raises(ToxiproxyError, match="invalid toxic type") as info:
        proxy.add_toxic("gremlin")
    assert info.value.status == 400
    with pytest.raises(ToxiproxyError, match="proxy already exists"):
        client.create_proxy("p", upstream="127.0.0.1:9")


def test_the_verbs_round_trip(client: ToxiproxyClient) -> None:
    proxy = client.create_proxy("p", upstream="127.0.0.1:9", listen="localhost:0")
    assert proxy.host == "127.0.0.1" and proxy.port > 0
    proxy.add_toxic("latency", stream="upstream", latency=10, jitter=2)
    proxy.update_toxic("latency_upstream", toxicity=0.5, latency=20)
    toxic = proxy.list_toxics()[0]
    assert (toxic.attributes, toxic.toxicity) == ({"latency": 20, "jitter": 2}, 0.5)
    port = proxy.port
    assert proxy.disable().enabled is False
    assert proxy.enable().port == port
    client.reset()
    assert client.proxy("p").toxics == []
    proxy.delete()
    assert client.proxies() == {}


def test_a_missing_server_is_one_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProxyUnavailable, match=f"no Toxiproxy API at http://127.0.0.1:{port}"):
        ToxiproxyClient(f"http://127.0.0.1:{port}", timeout=1).version()


def test_the_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESTBED_TOXIPROXY_URL", "http://127.0.0.1:18999")
    assert (ToxiproxyClient().host, ToxiproxyClient().port) == ("127.0.0.1", 18999)


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _metric(client: ToxiproxyClient, name: str) -> float:
    conn = __import__("http.client").client.HTTPConnection(client.host, client.port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_ten_thousand_short_connections_leak_no_fds_or_tasks(
    testbed_backend: LocalBackend, client: ToxiproxyClient, echo_port: int
) -> None:
    proxy = client.create_proxy("echo", upstream=f"127.0.0.1:{echo_port}")
    pid = testbed_backend.proxy.pid

    def ping_pong(count: int) -> None:
        deadline = time.monotonic() + 120
        for i in range(count):
            assert time.monotonic() < deadline, f"only {i} connections in 120 s"
            with socket.create_connection((proxy.host, proxy.port), timeout=5) as conn:
                conn.sendall(b"ping")
                assert conn.recv(16) == b"ping"

    def settled() -> tuple[int, float]:
        tasks = _metric(client, "bc_testbed_proxy_tasks")
        time.sleep(0.3)  # the API connection of that call and the last closes are done
        return _open_fds(pid), tasks

    ping_pong(10)  # warm-up: whatever the first connection allocates for good
    fds_before, tasks_before = settled()
    ping_pong(10_000)
    fds_after, tasks_after = settled()
    assert _metric(client, "toxiproxy_proxy_connections") == 0
    assert fds_after <= fds_before
    assert tasks_after <= tasks_before


def test_the_proxy_process_stops_with_the_run(tmp_path: Path) -> None:
    with LocalBackend(home=tmp_path) as backend:
        backend.start_proxy()
        pid = backend.proxy.pid
        assert procs.alive(pid)
    assert not procs.alive(pid)


def test_a_kept_connection_the_server_closed_is_replaced_once() -> None:
    """Calls share one kept-alive connection. A server may close it between calls (a real
    Toxiproxy restarted, an idle timeout): the next call opens a new one instead of
    failing, and a server that answers nothing at all is still one clear error."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    body = b'{"version": "2.9.0"}'

    def serve() -> None:
        for _ in range(3):
            conn, _ = server.accept()
            accepted.append(conn)
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            conn.close()  # no "Connection: close": the client learns of it on its next call

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ToxiproxyClient(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2)
    assert [client.version() for _ in range(3)] == ["2.9.0"] * 3
    assert len(accepted) == 3
    thread.join(timeout=5)
    server.close()
    with pytest.raises(ProxyUnavailable, match="no Toxiproxy API"):
        client.version()


def test_calls_in_a_row_share_one_connection(client: ToxiproxyClient) -> None:
    client.version()
    kept = list(client._idle)
    for _ in range(20):
        client.proxies()
    assert len(kept) == 1 and client._idle == kept
