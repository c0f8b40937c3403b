"""timeout: drops all data in its direction; a positive timeout closes the connection once that
long has passed without incoming data (each dropped chunk restarts the clock); 0 holds it
open for ever; removing the toxic, or /reset, closes the connection on both ends."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netfault_support import (
    Api,
    TcpServer,
    connect,
    listen_port,
    read_to_end,
    round_trip,
    running_toxiproxy,
    sink,
)


@pytest.fixture
def port(echo_proxy: dict) -> int:
    return listen_port(echo_proxy)


def test_timeout_zero_holds_data_and_the_connection(
    api: Api, port: int, echo_server: TcpServer
) -> None:
    api.add_toxic("echo", "timeout", timeout=0)
    with connect(port) as client:
        client.sendall(b"into the void")
        ending = read_to_end(client, 0.3)
        assert ending.how == "open", ending
        assert ending.data == b""
        (peer,) = echo_server.wait_for_peers(1)
        assert peer.received == b"into the void"  # only the downstream is cut
        assert not peer.ended.is_set()


def test_upstream_timeout_zero_drops_what_the_client_sends(api: Api, tcp_server: Callable) -> None:
    server = tcp_server(sink)
    port = listen_port(api.create_proxy("sink", server.address))
    api.add_toxic("sink", "timeout", stream="upstream", timeout=0)
    with connect(port) as client:
        client.sendall(b"dropped")
        (peer,) = server.wait_for_peers(1)
        ending = read_to_end(client, 0.3)
        assert ending.how == "open", ending
        assert peer.received == b""
        assert not peer.ended.is_set()


def test_removing_a_timeout_toxic_closes_both_ends(
    api: Api, port: int, echo_server: TcpServer
) -> None:
    api.add_toxic("echo", "timeout", timeout=0)
    with connect(port) as client:
        client.sendall(b"held")
        (peer,) = echo_server.wait_for_peers(1)
        time.sleep(0.1)
        removal = api.remove_toxic("echo", "timeout_downstream")
        assert removal.elapsed < 0.25, removal
        ending = read_to_end(client, 1.0)
        assert ending.how in ("eof", "reset"), ending
        assert ending.data == b""
        assert peer.wait_ended(1.0), "the upstream connection stayed open"


def test_reset_closes_a_connection_held_by_a_timeout_toxic(
    api: Api, port: int, echo_server: TcpServer
) -> None:
    api.add_toxic("echo", "timeout", timeout=0)
    with connect(port) as client:
        client.sendall(b"held")
        (peer,) = echo_server.wait_for_peers(1)
        reply = api.post("/reset")
        assert reply.status == 204
        assert reply.elapsed < 0.25, reply
        assert read_to_end(client, 1.0).how in ("eof", "reset")
        assert peer.wait_ended(1.0), "the upstream connection stayed open"


def test_timeout_closes_after_its_delay_without_data(api: Api, port: int) -> None:
    api.add_toxic("echo", "timeout", timeout=200)
    with connect(port) as client:
        ending = read_to_end(client, 1.0)
    assert ending.how == "eof", ending
    assert 0.19 <= ending.elapsed <= 0.3, f"closed after {ending.elapsed * 1000:.0f} ms"


def test_each_dropped_chunk_restarts_the_timer(api: Api, port: int) -> None:
    api.add_toxic("echo", "timeout", timeout=200)
    with connect(port) as client:
        for _ in range(5):  # 500 ms of traffic, never 200 ms apart
            client.sendall(b"tick")
            time.sleep(0.1)
        last = time.monotonic() - 0.1
        ending = read_to_end(client, 1.0)
        closed_after_last = time.monotonic() - last
    assert ending.how == "eof", ending
    assert ending.data == b""
    assert 0.19 <= closed_after_last <= 0.3, f"{closed_after_last * 1000:.0f} ms after the last"


def test_a_timeout_added_to_a_live_connection_applies(api: Api, port: int) -> None:
    with connect(port) as client:
        round_trip(client)
        start = time.monotonic()
        api.add_toxic("echo", "timeout", timeout=100)
        ending = read_to_end(client, 1.0)
        elapsed = time.monotonic() - start
    assert ending.how == "eof", ending
    assert 0.09 <= elapsed <= 0.25, f"closed {elapsed * 1000:.0f} ms after the toxic came"


def test_an_upstream_timeout_drops_data_then_closes(api: Api, tcp_server: Callable) -> None:
    server = tcp_server(sink)
    port = listen_port(api.create_proxy("sink", server.address))
    api.add_toxic("sink", "timeout", stream="upstream", timeout=150)
    with connect(port) as client:
        client.sendall(b"lost")
        ending = read_to_end(client, 1.0)
    assert ending.how == "eof", ending
    assert 0.14 <= ending.elapsed <= 0.25, f"closed after {ending.elapsed * 1000:.0f} ms"
    (peer,) = server.wait_for_peers(1)
    assert peer.wait_ended(1.0)
    assert peer.received == b""


# Ours only: the reference dials at once (so does our -reference mode, below).
ours_only = pytest.mark.skipif(
    bool(os.environ.get("NETFAULT_SERVER")), reason="an extension of ours: not in the reference"
)


def hole_both_ways(api: Api, proxy: str = "echo") -> None:
    for stream in ("upstream", "downstream"):
        api.add_toxic(proxy, "timeout", stream=stream, timeout=0)


def connections(api: Api, proxy: str = "echo") -> int:
    text = api.get("/metrics").body.decode()
    prefix = f'toxiproxy_proxy_connections{{proxy="{proxy}"}} '
    counts = [int(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return counts[0] if counts else 0


def wait_for_connections(api: Api, count: int, timeout: float = 2.0) -> int:
    deadline = time.monotonic() + timeout
    while (now := connections(api)) != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return now


@ours_only
def test_a_black_hole_both_ways_dials_no_upstream_until_it_is_gone(
    api: Api, port: int, echo_server: TcpServer
) -> None:
    # Nothing crosses either way: a server behind it (a PostgreSQL forking a backend per
    # connection) is spared a connection that would never say a word.
    hole_both_ways(api)
    with connect(port) as client:
        client.sendall(b"into the void")
        ending = read_to_end(client, 0.3)
        assert ending.how == "open", ending
        assert echo_server.peers == [], "the proxy dialled the upstream through a black hole"
        # Removing the hole closes what it held, as it does a dialled connection.
        api.remove_toxic("echo", "timeout_upstream")
        ending = read_to_end(client, 1.0)
        assert ending.how in ("eof", "reset"), ending
        assert echo_server.peers == []
    # Half of the hole left: a new client is dialled, and its bytes cross that way.
    with connect(port) as client:
        client.sendall(b"one way")
        (peer,) = echo_server.wait_for_peers(1)
        assert peer.wait_received(len(b"one way")) == b"one way"


@ours_only
def test_a_client_that_resets_in_the_hole_leaves_nothing_behind(
    api: Api, port: int, echo_server: TcpServer
) -> None:
    # Each attempt of a caller across an outage ends with a reset at its deadline: a held
    # connection must notice it, or every attempt keeps a socket until the hole goes.
    hole_both_ways(api)
    for _ in range(5):
        with connect(port) as client:
            client.sendall(b"startup")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert wait_for_connections(api, 0) == 0
    assert echo_server.peers == []


@ours_only
def test_a_black_hole_that_may_end_dials_the_connection_it_held(
    api: Api, port: int, echo_server: TcpServer
) -> None:
    hole_both_ways(api)
    with connect(port) as client:
        client.sendall(b"waited")
        time.sleep(0.2)
        assert echo_server.peers == []
        # The downstream's hole closes after a while now: something may cross one day,
        # so the connection is dialled, and the upstream's hole still swallows its bytes.
        api.update_toxic("echo", "timeout_downstream", {"attributes": {"timeout": 5000}})
        (peer,) = echo_server.wait_for_peers(1)
        assert not peer.ended.is_set()
        assert peer.received == b""


@ours_only
def test_a_hole_with_another_toxic_beside_it_is_dialled_as_ever(
    api: Api, port: int, echo_server: TcpServer
) -> None:
    # A toxic besides the holes (here a timer that closes an idle connection) acts on the
    # connection as it would on a dialled one: only bare holes keep the dial back.
    hole_both_ways(api)
    api.add_toxic("echo", "timeout", stream="downstream", name="idle", timeout=200)
    with connect(port) as client:
        echo_server.wait_for_peers(1)
        ending = read_to_end(client, 1.0)
        assert ending.how in ("eof", "reset"), ending


def test_the_reference_mode_dials_through_a_black_hole_as_toxiproxy_does(
    tmp_path: Path, echo_server: TcpServer
) -> None:
    with running_toxiproxy(tmp_path / "reference.log", "-reference") as reference:
        port = listen_port(reference.api.create_proxy("echo", echo_server.address))
        for stream in ("upstream", "downstream"):
            reference.api.add_toxic("echo", "timeout", stream=stream, timeout=0)
        with connect(port) as client:
            client.sendall(b"into the void")
            echo_server.wait_for_peers(1)
