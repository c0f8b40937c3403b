"""slow_open (an extension): new connections wait before the upstream is dialled; the data
is intact, and live connections are not slowed."""

from __future__ import annotations

import time

import pytest
from netfault_support import Api, connect, listen_port, recv_exactly, round_trip


@pytest.fixture
def port(echo_proxy: dict) -> int:
    return listen_port(echo_proxy)


def test_a_new_connection_waits_for_the_delay(api: Api, port: int) -> None:
    api.add_toxic("echo", "slow_open", stream="upstream", delay=200)
    with connect(port) as client:
        first = round_trip(client, b"hello")
        second = round_trip(client, b"again")
    assert 0.19 <= first <= 0.3, f"first round trip {first * 1000:.0f} ms, expected ~200"
    assert second < 0.05, "a live connection must not be slowed"


def test_toxicity_zero_opens_at_once(api: Api, port: int) -> None:
    api.add_toxic("echo", "slow_open", stream="upstream", toxicity=0.0, delay=500)
    with connect(port) as client:
        assert round_trip(client, b"hello") < 0.1


def test_removing_it_lets_a_waiting_connection_through(api: Api, port: int) -> None:
    api.add_toxic("echo", "slow_open", stream="upstream", delay=5000)
    with connect(port) as client:
        client.sendall(b"waiting")
        start = time.monotonic()
        api.remove_toxic("echo", "slow_open_upstream")
        assert recv_exactly(client, 7) == b"waiting"  # held, not lost
    assert time.monotonic() - start < 1.0


def test_slow_open_is_a_valid_type_with_its_attribute(api: Api, port: int) -> None:
    toxic = api.add_toxic("echo", "slow_open", stream="upstream", delay=10)
    assert toxic["attributes"] == {"delay": 10}
