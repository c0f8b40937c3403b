"""slicer: each chunk is split into pieces of about `average_size` bytes (+/- size_variation)
sent `delay` microseconds apart; the bytes themselves are unchanged."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from netfault_support import (
    Api,
    connect,
    listen_port,
    pattern,
    read_to_end,
    recv_exactly,
    send_in_background,
    sink,
    source,
)


def test_one_write_arrives_as_several_small_reads(api: Api, tcp_server: Callable) -> None:
    payload = pattern(1000)
    server = tcp_server(source(payload, then_close=False))
    port = listen_port(api.create_proxy("slices", server.address))
    api.add_toxic("slices", "slicer", average_size=100, size_variation=20, delay=10_000)
    sizes: list[int] = []
    data = bytearray()
    with connect(port) as client:
        start = time.monotonic()
        while len(data) < len(payload) and time.monotonic() - start < 3:  # bounded
            chunk = client.recv(65536)
            assert chunk, f"EOF after {len(data)} bytes"
            sizes.append(len(chunk))
            data += chunk
        elapsed = time.monotonic() - start
    assert bytes(data) == payload
    assert len(sizes) >= 5, sizes
    assert statistics.median(sizes) <= 120, sizes
    assert elapsed >= 0.04, f"{len(sizes)} pieces 10 ms apart came in {elapsed * 1000:.0f} ms"


def test_upstream_slices_reach_the_server_separately(api: Api, tcp_server: Callable) -> None:
    server = tcp_server(sink)
    port = listen_port(api.create_proxy("slices", server.address))
    api.add_toxic("slices", "slicer", stream="upstream", average_size=50, delay=5_000)
    payload = pattern(600)
    with connect(port) as client:
        client.sendall(payload)
        (peer,) = server.wait_for_peers(1)
        assert peer.wait_received(len(payload), 3.0) == payload
    assert len(peer.reads) >= 4, peer.reads


def test_a_large_transfer_through_a_slicer_is_intact(api: Api, echo_proxy: dict) -> None:
    api.add_toxic("echo", "slicer", average_size=1500, size_variation=1000)
    payload = pattern(256 * 1024)
    with connect(listen_port(echo_proxy)) as client:
        writer = send_in_background(client, payload)
        assert recv_exactly(client, len(payload)) == payload
        writer.result()
        assert read_to_end(client, 0.1).how == "open"
