"""slow_close: data passes unchanged, but the close that follows EOF is delayed by `delay` ms."""

from __future__ import annotations

import time
from collections.abc import Callable

from netfault_support import Api, connect, listen_port, read_to_end, recv_exactly, sink, source


def test_the_close_is_delayed_but_not_the_data(api: Api, tcp_server: Callable) -> None:
    server = tcp_server(source(b"bye"))
    port = listen_port(api.create_proxy("bye", server.address))
    api.add_toxic("bye", "slow_close", delay=300)
    with connect(port) as client:
        start = time.monotonic()
        assert recv_exactly(client, 3, timeout=1.0) == b"bye"
        data_after = time.monotonic() - start
        ending = read_to_end(client, 1.5)
        closed_after = time.monotonic() - start
    assert data_after < 0.15, f"data took {data_after * 1000:.0f} ms"
    assert ending.how == "eof", ending
    assert 0.29 <= closed_after <= 0.4, f"closed after {closed_after * 1000:.0f} ms"


def test_without_the_toxic_the_close_is_immediate(api: Api, tcp_server: Callable) -> None:
    server = tcp_server(source(b"bye"))
    port = listen_port(api.create_proxy("bye", server.address))
    with connect(port) as client:
        ending = read_to_end(client, 1.0)
    assert ending.how == "eof", ending
    assert ending.data == b"bye"
    assert ending.elapsed < 0.1


def test_upstream_slow_close_delays_the_close_towards_the_server(
    api: Api, tcp_server: Callable
) -> None:
    server = tcp_server(sink)
    port = listen_port(api.create_proxy("sink", server.address))
    api.add_toxic("sink", "slow_close", stream="upstream", delay=300)
    with connect(port) as client:
        client.sendall(b"last words")
        (peer,) = server.wait_for_peers(1)
        assert peer.wait_received(10, 1.0) == b"last words"
        closed_at = time.monotonic()
    assert peer.wait_ended(1.5), "the upstream connection was never closed"
    assert peer.ended_at is not None
    delay = peer.ended_at - closed_at
    assert 0.29 <= delay <= 0.4, f"closed {delay * 1000:.0f} ms after the client"
