"""Our extension: a `bandwidth` toxic with a `group` books its bytes on one shared link, so
every connection of every proxy naming the group shares one rate (a WAN link), while a
bandwidth toxic without one keeps the reference's per-connection limit."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import pytest
from netfault_support import (
    Api,
    Peer,
    TcpServer,
    connect,
    listen_port,
    pattern,
    round_trip,
    send_in_background,
    sink,
)

RATE_KB_S = 1000
EACH = 400_000  # bytes each client sends: alone at 1000 KB/s, 0.4 s


@pytest.fixture
def sink_server(tcp_server: Callable[..., TcpServer]) -> TcpServer:
    return tcp_server(sink)


def _proxies(api: Api, sink_server: TcpServer, count: int) -> list[int]:
    return [listen_port(api.create_proxy(f"route{i}", sink_server.address)) for i in range(count)]


def _send_together(ports: list[int], sink_server: TcpServer, size: int) -> list[float]:
    """Every client sends `size` bytes at once, one per port; seconds until each one's last
    byte reached the upstream, from the common start."""
    clients = [connect(port) for port in ports]
    try:
        peers = sink_server.wait_for_peers(len(ports))
        start = time.monotonic()
        writers = [send_in_background(client, pattern(size)) for client in clients]
        done = [_arrival(peer, size) - start for peer in peers]
        for writer in writers:
            writer.result()
        return done
    finally:
        for client in clients:
            client.close()


def _arrival(peer: Peer, size: int) -> float:
    received = peer.wait_received(size, timeout=20)
    assert len(received) == size, f"{len(received)} of {size} bytes arrived"
    total = 0
    for at, count in peer.reads:
        total += count
        if total >= size:
            return at
    raise AssertionError("unreachable")


def test_connections_of_several_proxies_share_one_rate(api: Api, sink_server: TcpServer) -> None:
    ports = _proxies(api, sink_server, 3)
    for i in range(3):
        api.add_toxic(f"route{i}", "bandwidth", stream="upstream", rate=RATE_KB_S, group="a->b")
    done = _send_together(ports, sink_server, EACH)
    # 1.2 MB at 1000 KB/s: 1.2 s for the last byte (per-connection limits would take 0.4 s).
    assert max(done) >= 1.2 * 0.95, f"{max(done):.2f} s: the link carried more than its rate"
    assert max(done) <= 1.2 * 1.25, f"{max(done):.2f} s: the link carried far less than its rate"
    # Fair: every busy connection gets its turn, so none is done long before the others.
    assert min(done) >= 0.8 * max(done), f"finish times {done}: one connection took the link"


def test_without_a_group_each_connection_gets_the_whole_rate(
    api: Api, sink_server: TcpServer
) -> None:
    ports = _proxies(api, sink_server, 3)
    for i in range(3):
        api.add_toxic(f"route{i}", "bandwidth", stream="upstream", rate=RATE_KB_S)
    done = _send_together(ports, sink_server, EACH)
    assert max(done) < 0.7, f"{max(done):.2f} s: per-connection limits were shared"


def test_groups_are_separate_links(api: Api, sink_server: TcpServer) -> None:
    """The two directions of a WAN link (or two links) are two groups: no shared capacity."""
    ports = _proxies(api, sink_server, 2)
    api.add_toxic("route0", "bandwidth", stream="upstream", rate=RATE_KB_S, group="a->b")
    api.add_toxic("route1", "bandwidth", stream="upstream", rate=RATE_KB_S, group="b->a")
    done = _send_together(ports, sink_server, EACH)
    assert max(done) < 0.7, f"{max(done):.2f} s: two groups shared one rate"


def test_a_group_added_and_removed_on_live_connections(api: Api, sink_server: TcpServer) -> None:
    ports = _proxies(api, sink_server, 2)
    clients = [connect(port) for port in ports]
    try:
        peers = sink_server.wait_for_peers(2)
        for i in range(2):
            api.add_toxic(f"route{i}", "bandwidth", stream="upstream", rate=100, group="a->b")
        writers = [send_in_background(client, pattern(EACH)) for client in clients]
        time.sleep(0.5)
        early = sum(len(peer.received) for peer in peers)
        assert early <= 100_000 * 0.5 * 1.3 + 20_000, f"{early} bytes in 0.5 s at 100 KB/s"
        for i in range(2):
            api.remove_toxic(f"route{i}", "bandwidth_upstream")
        for peer in peers:
            assert len(peer.wait_received(EACH, timeout=3)) == EACH
        for writer in writers:
            writer.result()
    finally:
        for client in clients:
            client.close()


def test_the_group_is_shown_and_survives_an_update(api: Api, sink_server: TcpServer) -> None:
    _proxies(api, sink_server, 1)
    plain = api.add_toxic("route0", "bandwidth", name="plain", rate=5)
    assert plain["attributes"] == {"rate": 5}  # as the reference shows it
    grouped = api.add_toxic("route0", "bandwidth", name="grouped", rate=5, group="a->b")
    assert grouped["attributes"] == {"rate": 5, "group": "a->b"}
    updated = api.update_toxic("route0", "grouped", {"attributes": {"rate": 7}})
    assert updated["attributes"] == {"rate": 7, "group": "a->b"}
    cleared = api.update_toxic("route0", "grouped", {"attributes": {"group": ""}})
    assert cleared["attributes"] == {"rate": 7}


def test_a_group_that_is_not_text_is_refused(api: Api, sink_server: TcpServer) -> None:
    _proxies(api, sink_server, 1)
    body = {"type": "bandwidth", "attributes": {"rate": 5, "group": 3}}
    reply = api.post("/proxies/route0/toxics", body)
    assert reply.status == 400, reply
    assert "group" in reply.error


def test_metrics_show_what_crossed_each_link(api: Api, sink_server: TcpServer) -> None:
    """A link of its own: links outlive proxies, and this server served the other tests."""
    ports = _proxies(api, sink_server, 2)
    for i in range(2):
        api.add_toxic(f"route{i}", "bandwidth", stream="upstream", rate=10_000, group="c->d")
    _send_together(ports, sink_server, 50_000)
    text = api.get("/metrics").body.decode()
    sent = re.search(r'bc_testbed_link_sent_bytes_total\{link="c->d"\} (\d+)', text)
    assert sent is not None, text
    assert int(sent.group(1)) == 100_000
    assert 'bc_testbed_link_rate_kilobytes{link="c->d"} 10000' in text


def test_a_small_message_does_not_wait_behind_a_bulk_flow(
    api: Api, sink_server: TcpServer, echo_server: TcpServer
) -> None:
    """A query crossing a link that a bulk copy fills waits one short turn per busy
    connection, as behind a fair-queueing router, not a whole 16 KB piece of the copy's
    (82 ms at 200 KB/s, which is 5 min of scenario time at 1h = 1s)."""
    bulk = listen_port(api.create_proxy("bulk", sink_server.address))
    query = listen_port(api.create_proxy("query", echo_server.address))
    for proxy in ("bulk", "query"):
        api.add_toxic(proxy, "bandwidth", stream="upstream", rate=200, group="slow->link")
    with connect(bulk) as copy, connect(query) as client:
        writer = send_in_background(copy, pattern(300_000))
        time.sleep(0.3)  # the copy has the link booked ahead
        round_trips = sorted(round_trip(client, b"select 1") for _ in range(7))
        copy.close()
        with contextlib.suppress(OSError):
            writer.result()
    assert round_trips[3] < 0.04, f"median round trip {round_trips[3] * 1000:.0f} ms"
