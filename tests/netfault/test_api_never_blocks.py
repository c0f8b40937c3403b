"""The API answers promptly while the data path is stalled: the reference freezes its whole API
when a toxic is removed under load or while data is held (its first "do better" item)."""

from __future__ import annotations

import socket
import time

import pytest
from netfault_support import (
    Api,
    Background,
    TcpServer,
    connect,
    listen_port,
    pattern,
    read_to_end,
    recv_exactly,
    send_in_background,
)

PROMPT = 0.25  # seconds: "about 200 ms" with room for a loaded 2-core machine

STALLS = {
    "bandwidth-0": ("bandwidth", {"rate": 0}),
    "timeout-0": ("timeout", {"timeout": 0}),
    "latency-10s": ("latency", {"latency": 10_000}),
}


def _stall(
    api: Api, proxy: dict, type_: str, attributes: dict, size: int
) -> tuple[socket.socket, Background]:
    """A connection with `size` bytes in flight, held by the toxic on the downstream."""
    api.add_toxic("echo", type_, name="stall", **attributes)
    client = connect(listen_port(proxy))
    writer = send_in_background(client, pattern(size), timeout=15)
    time.sleep(0.2)  # let the data reach the toxic
    return client, writer


@pytest.mark.parametrize("stall", sorted(STALLS))
def test_the_api_answers_while_data_is_stalled(
    api: Api, echo_proxy: dict, echo_server: TcpServer, stall: str
) -> None:
    type_, attributes = STALLS[stall]
    payload = pattern(1_000_000)
    client, writer = _stall(api, echo_proxy, type_, attributes, len(payload))
    with client:
        replies = {
            "GET /proxies": api.get("/proxies"),
            "GET /proxies/echo": api.get("/proxies/echo"),
            "GET toxics": api.get("/proxies/echo/toxics"),
            "GET /version": api.get("/version"),
            "update toxic": api.post(
                "/proxies/echo/toxics/stall", {"attributes": attributes, "toxicity": 1.0}
            ),
            "DELETE toxic": api.delete("/proxies/echo/toxics/stall"),
        }
        slow = {what: reply for what, reply in replies.items() if reply.elapsed > PROMPT}
        assert not slow, slow
        assert [reply.status for reply in replies.values()] == [200, 200, 200, 200, 200, 204]
        if type_ == "timeout":  # removal closes the connection
            assert read_to_end(client, 2.0).how in ("eof", "reset")
        else:  # removal flushes what was held, then data flows again
            assert recv_exactly(client, len(payload), timeout=10) == payload
            writer.result(10)


def test_other_proxies_keep_working_while_one_is_stalled(
    api: Api, echo_proxy: dict, echo_server: TcpServer
) -> None:
    client, _writer = _stall(api, echo_proxy, "bandwidth", {"rate": 0}, 1_000_000)
    with client:
        start = time.monotonic()
        other = api.create_proxy("other", echo_server.address)
        with connect(listen_port(other)) as second:
            second.sendall(b"still alive")
            assert recv_exactly(second, 11, timeout=1.0) == b"still alive"
        assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("how", ["delete proxy", "disable proxy", "reset"])
def test_tearing_down_a_stalled_proxy_is_prompt(
    api: Api, echo_proxy: dict, echo_server: TcpServer, how: str
) -> None:
    payload = pattern(1_000_000)
    client, writer = _stall(api, echo_proxy, "bandwidth", {"rate": 0}, len(payload))
    with client:
        if how == "delete proxy":
            reply = api.delete("/proxies/echo")
            assert reply.status == 204, reply
        elif how == "disable proxy":
            reply = api.post("/proxies/echo", {"enabled": False})
            assert reply.status == 200, reply
        else:
            reply = api.post("/reset")
            assert reply.status == 204, reply
        assert reply.elapsed < PROMPT, reply
        if how == "reset":  # the toxic is gone, the connection is not
            assert recv_exactly(client, len(payload), timeout=10) == payload
            writer.result(10)
            return
        assert read_to_end(client, 1.0).how in ("eof", "reset")
    (peer,) = echo_server.wait_for_peers(1)
    assert peer.wait_ended(1.0), "the upstream connection stayed open"
