"""The data path without (or across) toxics: bytes arrive intact, closes propagate, disable and
delete cut live connections, and changing toxics under load loses nothing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from netfault_support import (
    Api,
    Background,
    TcpServer,
    assert_refused,
    connect,
    free_port,
    listen_port,
    pattern,
    read_to_end,
    recv_exactly,
    round_trip,
    send_in_background,
    source,
)


def test_a_64k_message_comes_back_intact(api: Api, echo_proxy: dict) -> None:
    payload = pattern(64 * 1024)
    with connect(listen_port(echo_proxy)) as client:
        client.sendall(payload)
        assert recv_exactly(client, len(payload)) == payload


def test_many_connections_at_once_are_independent(api: Api, echo_proxy: dict) -> None:
    clients = [connect(listen_port(echo_proxy)) for _ in range(20)]
    try:
        for index, client in enumerate(clients):
            client.sendall(f"hello {index:02}".encode())
        for index, client in enumerate(clients):
            assert recv_exactly(client, 8) == f"hello {index:02}".encode()
    finally:
        for client in clients:
            client.close()


def test_an_upstream_that_is_down_gives_the_client_eof_quickly(api: Api) -> None:
    proxy = api.create_proxy("dead", f"127.0.0.1:{free_port()}")
    with connect(listen_port(proxy)) as client:
        ending = read_to_end(client, 0.5)
    assert ending.how == "eof", ending
    assert ending.data == b""


def test_an_upstream_close_reaches_the_client(api: Api, tcp_server: Callable) -> None:
    server = tcp_server(source(b"goodbye"))
    proxy = api.create_proxy("bye", server.address)
    with connect(listen_port(proxy)) as client:
        ending = read_to_end(client, 1.0)
    assert ending.how == "eof", ending
    assert ending.data == b"goodbye"


def test_a_client_half_close_closes_both_sides(
    api: Api, echo_proxy: dict, echo_server: TcpServer
) -> None:
    """No half-close: EOF from the client ends the upstream connection and then the client's."""
    with connect(listen_port(echo_proxy)) as client:
        round_trip(client)
        client.shutdown(socket.SHUT_WR)
        (peer,) = echo_server.wait_for_peers(1)
        assert peer.wait_ended(1.0), "the upstream connection stayed open"
        assert read_to_end(client, 1.0).how in ("eof", "reset")


def test_disable_closes_live_connections_and_refuses_new_ones(
    api: Api, echo_proxy: dict, echo_server: TcpServer
) -> None:
    port = listen_port(echo_proxy)
    with connect(port) as live:
        round_trip(live)
        api.update_proxy("echo", enabled=False)
        assert read_to_end(live, 1.0).how in ("eof", "reset")
    assert_refused(port)
    (peer,) = echo_server.wait_for_peers(1)
    assert peer.wait_ended(1.0), "the upstream side of the connection stayed open"


def test_re_enable_listens_on_the_same_port(api: Api, echo_proxy: dict) -> None:
    api.update_proxy("echo", enabled=False)
    again = api.update_proxy("echo", enabled=True)
    assert again["listen"] == echo_proxy["listen"]
    with connect(listen_port(echo_proxy)) as client:
        round_trip(client)


def test_delete_closes_live_connections(api: Api, echo_proxy: dict, echo_server: TcpServer) -> None:
    port = listen_port(echo_proxy)
    with connect(port) as live:
        round_trip(live)
        api.delete_proxy("echo")
        assert read_to_end(live, 1.0).how in ("eof", "reset")
    assert_refused(port)
    (peer,) = echo_server.wait_for_peers(1)
    assert peer.wait_ended(1.0), "the upstream side of the connection stayed open"


def test_no_data_is_lost_while_toxics_come_and_go(api: Api, echo_proxy: dict) -> None:
    """A few MB stream through while toxics that buffer data are added and removed."""
    payload = pattern(4 * 1024 * 1024)
    toxics = [
        {"type": "latency", "stream": "upstream", "attributes": {"latency": 20}},
        {"type": "latency", "stream": "downstream", "attributes": {"latency": 30, "jitter": 10}},
        {
            "type": "slicer",
            "stream": "downstream",
            "attributes": {"average_size": 2000, "size_variation": 500, "delay": 50},
        },
        {"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 20000}},
        {"type": "noop", "stream": "upstream", "attributes": {}},
    ]
    done = threading.Event()
    problems: list[str] = []
    toggles = 0

    def toggle() -> None:
        nonlocal toggles
        for index in range(150):  # bounded; ends early when the transfer is over
            if done.is_set():
                return
            toxic = {**toxics[index % len(toxics)], "name": f"t{index}"}
            created = api.post("/proxies/echo/toxics", toxic)
            time.sleep(0.02)
            removed = api.delete(f"/proxies/echo/toxics/t{index}")
            if created.status != 200 or removed.status != 204:
                problems.append(f"{toxic}: {created!r} {removed!r}")
            toggles += 1
            time.sleep(0.005)

    with connect(listen_port(echo_proxy), timeout=10) as client:
        toggler = Background(toggle)
        # paced so that the toggling overlaps the transfer
        writer = send_in_background(client, payload, piece=64 * 1024, pause=0.01, timeout=30)
        try:
            received = recv_exactly(client, len(payload), timeout=30)
        finally:
            done.set()
        writer.result(30)
        toggler.result(30)
    assert not problems, problems
    assert toggles >= 5, f"only {toggles} toxic changes overlapped the transfer"
    assert received == payload


def test_toxicity_is_drawn_per_connection_not_per_chunk(api: Api, echo_proxy: dict) -> None:
    """At 0.5 about half the connections are slowed, and a slowed one is slowed throughout."""
    api.add_toxic("echo", "latency", toxicity=0.5, latency=40)
    slowed = 0
    for _ in range(20):
        with connect(listen_port(echo_proxy)) as client:
            trips = [round_trip(client) >= 0.04 for _ in range(2)]
        assert trips[0] == trips[1], "toxicity was drawn again within one connection"
        slowed += trips[0]
    assert 3 <= slowed <= 17, f"{slowed} of 20 connections drew a toxicity of 0.5"


def test_toxicity_zero_passes_data_and_one_applies_the_toxic(api: Api, echo_proxy: dict) -> None:
    """A timeout toxic never drawn leaves the link alone; drawn, it closes after 100 ms."""
    port = listen_port(echo_proxy)
    api.add_toxic("echo", "timeout", toxicity=0.0, timeout=100)
    with connect(port) as client:
        for _ in range(3):
            assert round_trip(client) < 0.5
    api.update_toxic("echo", "timeout_downstream", {"toxicity": 1.0})
    with connect(port) as client:
        start = time.monotonic()
        client.sendall(b"ping")
        ending = read_to_end(client, 1.0)
        elapsed = time.monotonic() - start
    assert ending.how == "eof", ending
    assert ending.data == b""
    assert 0.09 <= elapsed <= 0.2, f"closed after {elapsed * 1000:.0f} ms, expected ~100"
