"""The third-party `toxiproxy-python` client (PyPI) drives the server unchanged: what its users
do, end to end, against real echo traffic."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# A hard import: the client is a dev dependency, and a skipped compatibility test proves nothing.
import toxiproxy.api as client_api
import toxiproxy.exceptions as client_exceptions
import toxiproxy.server as client_server
from netfault_support import (
    LOOPBACK,
    TcpServer,
    ToxiproxyServer,
    assert_refused,
    connect,
    listen_port,
    median_round_trip,
    round_trip,
)


@pytest.fixture
def server(toxiproxy: ToxiproxyServer) -> Iterator[Any]:
    """A client `Toxiproxy` pointed at the server under test (the client keeps its address in
    class attributes of APIConsumer; they are put back afterwards)."""
    consumer = client_api.APIConsumer
    saved = consumer.host, consumer.port
    client = client_server.Toxiproxy()
    client.update_api_consumer(toxiproxy.host, toxiproxy.port)
    yield client
    consumer.host, consumer.port = saved


def port_of(proxy: Any) -> int:
    return listen_port({"listen": proxy.listen})


def test_running_and_version(server: Any) -> None:
    assert server.running() is True
    assert b'"version"' in server.version()


def test_create_and_list(server: Any, echo_server: TcpServer) -> None:
    proxy = server.create(upstream=echo_server.address, name="echo")
    assert proxy.name == "echo"
    assert proxy.upstream == echo_server.address
    assert proxy.enabled is True
    assert proxy.listen.startswith(f"{LOOPBACK}:")
    assert port_of(proxy) != 0
    assert set(server.proxies()) == {"echo"}
    assert server.get_proxy("echo").listen == proxy.listen
    assert server.get_proxy("missing") is None
    with connect(port_of(proxy)) as client:
        round_trip(client)


def test_create_twice_raises_proxy_exists(server: Any, echo_server: TcpServer) -> None:
    server.create(upstream=echo_server.address, name="echo")
    with pytest.raises(client_exceptions.ProxyExists):
        server.create(upstream=echo_server.address, name="echo")


def test_latency_toxic_delays_a_round_trip_and_removal_restores_it(
    server: Any, echo_server: TcpServer
) -> None:
    proxy = server.create(upstream=echo_server.address, name="echo")
    with connect(port_of(proxy)) as client:
        baseline = median_round_trip(client, 3)
        proxy.add_toxic(type="latency", attributes={"latency": 100})
        toxics = proxy.toxics()
        assert set(toxics) == {"latency_downstream"}
        toxic = toxics["latency_downstream"]
        assert (toxic.type, toxic.stream, toxic.toxicity) == ("latency", "downstream", 1.0)
        assert toxic.attributes == {"latency": 100, "jitter": 0}
        added = median_round_trip(client, 3) - baseline
        assert 0.09 <= added <= 0.13, f"added {added * 1000:.0f} ms"
        assert proxy.destroy_toxic("latency_downstream") is True
        assert proxy.toxics() == {}
        assert proxy.get_toxic("latency_downstream") is None
        assert median_round_trip(client, 3) < 0.05


def test_an_invalid_toxic_raises(server: Any, echo_server: TcpServer) -> None:
    proxy = server.create(upstream=echo_server.address, name="echo")
    with pytest.raises(client_exceptions.InvalidToxic):
        proxy.add_toxic(type="lag")
    with pytest.raises(client_exceptions.InvalidToxic):
        proxy.add_toxic(type="latency", stream="sideways")
    proxy.add_toxic(type="latency", name="slow")
    with pytest.raises(client_exceptions.ProxyExists):
        proxy.add_toxic(type="latency", name="slow", stream="upstream")


def test_disable_enable_and_down(server: Any, echo_server: TcpServer) -> None:
    proxy = server.create(upstream=echo_server.address, name="echo")
    port = port_of(proxy)
    proxy.disable()
    assert server.get_proxy("echo").enabled is False
    assert_refused(port)
    proxy.enable()
    assert server.get_proxy("echo").enabled is True
    with connect(port) as client:
        round_trip(client)
    with proxy.down():
        assert_refused(port)
    with connect(port) as client:
        round_trip(client)


def test_destroy(server: Any, echo_server: TcpServer) -> None:
    proxy = server.create(upstream=echo_server.address, name="echo")
    assert server.destroy(proxy) is True
    assert server.proxies() == {}
    assert_refused(port_of(proxy))
    with pytest.raises(client_exceptions.NotFound):
        proxy.destroy()


def test_reset_enables_and_clears_toxics(server: Any, echo_server: TcpServer) -> None:
    proxy = server.create(upstream=echo_server.address, name="echo")
    proxy.add_toxic(type="latency", attributes={"latency": 1000})
    proxy.disable()
    assert server.reset() is True
    again = server.get_proxy("echo")
    assert again.enabled is True
    assert again.toxics() == {}
    with connect(port_of(again)) as client:
        assert round_trip(client) < 0.5


def test_populate_and_destroy_all(server: Any, echo_server: TcpServer) -> None:
    created = server.populate(
        [
            {"name": "one", "upstream": echo_server.address, "listen": f"{LOOPBACK}:0"},
            {"name": "two", "upstream": echo_server.address, "listen": f"{LOOPBACK}:0"},
        ]
    )
    assert sorted(proxy.name for proxy in created) == ["one", "two"]
    assert set(server.proxies()) == {"one", "two"}
    server.destroy_all()
    assert server.proxies() == {}
