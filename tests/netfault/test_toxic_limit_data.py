"""limit_data: forward exactly `bytes` bytes per connection and direction (cutting the last
chunk short), then close."""

from __future__ import annotations

import time
from collections.abc import Callable

from netfault_support import (
    Api,
    connect,
    listen_port,
    pattern,
    read_to_end,
    recv_exactly,
    sink,
    source,
)


def test_downstream_data_is_cut_at_exactly_the_limit(api: Api, tcp_server: Callable) -> None:
    payload = pattern(5000)
    server = tcp_server(source(payload, then_close=False))
    port = listen_port(api.create_proxy("big", server.address))
    api.add_toxic("big", "limit_data", bytes=1000)
    with connect(port) as client:
        ending = read_to_end(client, 1.0)
    assert ending.how == "eof", ending
    assert ending.data == payload[:1000]


def test_every_connection_gets_its_own_allowance(api: Api, tcp_server: Callable) -> None:
    payload = pattern(3000)
    server = tcp_server(source(payload, then_close=False))
    port = listen_port(api.create_proxy("big", server.address))
    api.add_toxic("big", "limit_data", bytes=1200)
    for _ in range(3):
        with connect(port) as client:
            ending = read_to_end(client, 1.0)
        assert ending.how == "eof", ending
        assert ending.data == payload[:1200]


def test_upstream_data_is_cut_across_chunks_and_both_ends_close(
    api: Api, tcp_server: Callable
) -> None:
    """Three writes of 400 bytes against a limit of 1000: 400 + 400 + the first 200."""
    server = tcp_server(sink)
    port = listen_port(api.create_proxy("sink", server.address))
    api.add_toxic("sink", "limit_data", stream="upstream", bytes=1000)
    payload = pattern(1200)
    with connect(port) as client:
        for offset in range(0, 1200, 400):
            client.sendall(payload[offset : offset + 400])
            time.sleep(0.03)
        assert read_to_end(client, 1.0).how in ("eof", "reset")
    (peer,) = server.wait_for_peers(1)
    assert peer.wait_ended(1.0), "the upstream connection stayed open"
    assert peer.received == payload[:1000]


def test_data_under_the_limit_flows_untouched(api: Api, echo_proxy: dict) -> None:
    api.add_toxic("echo", "limit_data", bytes=100_000)
    payload = pattern(50_000)
    with connect(listen_port(echo_proxy)) as client:
        client.sendall(payload)
        assert recv_exactly(client, len(payload)) == payload
        assert read_to_end(client, 0.2).how == "open"
