"""bandwidth: output paced to `rate` KB/s (1 KB = 1000 B); 0 stalls; rate changes apply to a
transfer already under way."""

from __future__ import annotations

import time

import pytest
from netfault_support import (
    Api,
    connect,
    listen_port,
    pattern,
    read_to_end,
    recv_exactly,
    round_trip,
    send_in_background,
)


@pytest.fixture
def port(echo_proxy: dict) -> int:
    return listen_port(echo_proxy)


@pytest.mark.parametrize("stream", ["upstream", "downstream"])
def test_480kb_at_1000kbps_takes_480ms(api: Api, port: int, stream: str) -> None:
    """Timed from the first byte written to the last byte read."""
    api.add_toxic("echo", "bandwidth", stream=stream, rate=1000)
    payload = pattern(480_000)
    with connect(port) as client:
        start = time.monotonic()
        writer = send_in_background(client, payload)
        assert recv_exactly(client, len(payload)) == payload
        elapsed = time.monotonic() - start
        writer.result()
    assert 0.432 <= elapsed <= 0.6, f"{elapsed * 1000:.0f} ms, expected 480 (+/- 10%)"


def test_rate_zero_stalls_and_keeps_the_connection_open(api: Api, port: int) -> None:
    api.add_toxic("echo", "bandwidth", rate=0)
    with connect(port) as client:
        client.sendall(b"stuck")
        ending = read_to_end(client, 0.3)
    assert ending.how == "open", ending
    assert ending.data == b""


def test_a_rate_change_applies_to_a_transfer_under_way(api: Api, port: int) -> None:
    """At 50 KB/s, 300 KB takes 6 s; raised to 10 MB/s after 200 ms it must end far sooner."""
    api.add_toxic("echo", "bandwidth", rate=50)
    payload = pattern(300_000)
    with connect(port) as client:
        start = time.monotonic()
        writer = send_in_background(client, payload)
        early = read_to_end(client, 0.2)
        assert early.how == "open", early
        assert len(early.data) < 60_000, f"{len(early.data)} bytes in 200 ms at 50 KB/s"
        api.update_toxic("echo", "bandwidth_downstream", {"attributes": {"rate": 10_000}})
        rest = recv_exactly(client, len(payload) - len(early.data), timeout=3.0)
        elapsed = time.monotonic() - start
        writer.result()
    assert early.data + rest == payload
    assert elapsed < 1.5, f"{elapsed * 1000:.0f} ms: the new rate was not applied"


def test_removing_bandwidth_flushes_and_restores_speed(api: Api, port: int) -> None:
    api.add_toxic("echo", "bandwidth", rate=0)
    with connect(port) as client:
        client.sendall(b"held")
        time.sleep(0.1)
        api.remove_toxic("echo", "bandwidth_downstream")
        assert recv_exactly(client, 4, timeout=1.0) == b"held"
        assert round_trip(client) < 0.1
