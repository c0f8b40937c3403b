"""Fixtures for the Toxiproxy conformance suite: the server under test as a real subprocess
(one per test module, so a wedged server cannot spoil other families), a clean slate of
proxies for every test, and loopback servers to put behind the proxies."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from netfault_support import (
    Api,
    Handler,
    TcpServer,
    ToxiproxyServer,
    echo,
    running_toxiproxy,
)


@pytest.fixture(scope="module")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToxiproxyServer]:
    """The server under test: `.url`, `.host`, `.port`; stopped (killed if need be) at the end."""
    log = tmp_path_factory.mktemp("netfault") / "server.log"
    with running_toxiproxy(log) as server:
        yield server


@pytest.fixture
def api(toxiproxy: ToxiproxyServer) -> Api:
    return toxiproxy.api


@pytest.fixture(autouse=True)
def _no_proxies_left(toxiproxy: ToxiproxyServer) -> Iterator[None]:
    """Every test starts and ends with no proxy, so tests cannot see each other's state."""
    api = toxiproxy.api
    api.delete_all_proxies()
    yield
    assert toxiproxy.process.poll() is None, "the server died:\n" + toxiproxy.log_tail()
    api.delete_all_proxies()


@pytest.fixture
def tcp_server() -> Iterator[Callable[[Handler], TcpServer]]:
    """Make loopback servers with any handler; all are closed at teardown."""
    servers: list[TcpServer] = []

    def make(handler: Handler) -> TcpServer:
        server = TcpServer(handler)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def echo_server(tcp_server: Callable[[Handler], TcpServer]) -> TcpServer:
    """A loopback server that sends back whatever it receives."""
    return tcp_server(echo)


@pytest.fixture
def echo_proxy(api: Api, echo_server: TcpServer) -> dict:
    """A proxy named `echo` in front of `echo_server`, on a port the server picked."""
    return api.create_proxy("echo", echo_server.address)
