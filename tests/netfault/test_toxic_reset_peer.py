"""reset_peer: on the first chunk (or EOF) the data is dropped and, `timeout` ms later, the
connection is closed with RST, so the client sees ECONNRESET. Unlike the reference, a toxic
that was not drawn (toxicity 0) never resets, and one added to a live connection does."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from netfault_support import (
    Api,
    TcpServer,
    connect,
    listen_port,
    read_to_end,
    round_trip,
    source,
)


@pytest.fixture
def port(echo_proxy: dict) -> int:
    return listen_port(echo_proxy)


@pytest.mark.parametrize("stream", ["upstream", "downstream"])
def test_reset_peer_resets_after_its_timeout(api: Api, port: int, stream: str) -> None:
    api.add_toxic("echo", "reset_peer", stream=stream, timeout=100)
    with connect(port) as client:
        start = time.monotonic()
        client.sendall(b"reset toxic payload\n")
        ending = read_to_end(client, 1.0)
        elapsed = time.monotonic() - start
    assert ending.how == "reset", ending
    assert ending.data == b""
    assert 0.098 <= elapsed <= 0.14, f"reset after {elapsed * 1000:.0f} ms, expected 100 +/- 10"


def test_reset_peer_drops_the_chunk_it_fires_on(
    api: Api, port: int, echo_server: TcpServer
) -> None:
    api.add_toxic("echo", "reset_peer", stream="upstream", timeout=50)
    with connect(port) as client:
        client.sendall(b"never delivered")
        assert read_to_end(client, 1.0).how == "reset"
    (peer,) = echo_server.wait_for_peers(1)
    assert peer.wait_ended(1.0)
    assert peer.received == b""


def test_reset_peer_without_timeout_resets_at_once(api: Api, port: int) -> None:
    api.add_toxic("echo", "reset_peer", stream="upstream")
    with connect(port) as client:
        start = time.monotonic()
        client.sendall(b"now")
        ending = read_to_end(client, 1.0)
        elapsed = time.monotonic() - start
    assert ending.how == "reset", ending
    assert elapsed < 0.05, f"reset after {elapsed * 1000:.0f} ms"


def test_reset_peer_fires_on_eof_too(api: Api, tcp_server: Callable) -> None:
    """An upstream that closes without a byte: the client gets RST instead of FIN."""
    server = tcp_server(source(b""))
    port = listen_port(api.create_proxy("quiet", server.address))
    api.add_toxic("quiet", "reset_peer", timeout=50)
    with connect(port) as client:
        ending = read_to_end(client, 1.0)
    assert ending.how == "reset", ending


def test_reset_peer_with_toxicity_zero_never_resets(api: Api, tcp_server: Callable) -> None:
    """A toxic that was not drawn must leave the connection alone, its close included."""
    server = tcp_server(source(b"hello"))
    port = listen_port(api.create_proxy("polite", server.address))
    api.add_toxic("polite", "reset_peer", toxicity=0.0, timeout=0)
    for _ in range(3):
        with connect(port) as client:
            ending = read_to_end(client, 1.0)
        assert ending.how == "eof", ending
        assert ending.data == b"hello"


def test_reset_peer_with_toxicity_zero_passes_data(api: Api, port: int) -> None:
    api.add_toxic("echo", "reset_peer", stream="upstream", toxicity=0.0, timeout=0)
    with connect(port) as client:
        for _ in range(3):
            round_trip(client)


def test_reset_peer_added_to_a_live_connection_resets_it(api: Api, port: int) -> None:
    with connect(port) as client:
        round_trip(client)
        api.add_toxic("echo", "reset_peer", stream="upstream", timeout=0)
        client.sendall(b"after the toxic")
        ending = read_to_end(client, 1.0)
    assert ending.how == "reset", ending
