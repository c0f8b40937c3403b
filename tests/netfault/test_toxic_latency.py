"""latency: each chunk is released `latency` (+/- jitter) ms after it was received; chunks are
not serialized behind each other, toxics stack, and removal flushes what is held."""

from __future__ import annotations

import time

import pytest
from netfault_support import (
    Api,
    connect,
    listen_port,
    median_round_trip,
    recv_exactly,
    round_trip,
)

SLOP = 0.015  # scheduling and loopback cost allowed on top of the configured delay


@pytest.fixture
def port(echo_proxy: dict) -> int:
    return listen_port(echo_proxy)


@pytest.mark.parametrize("stream", ["upstream", "downstream"])
def test_latency_adds_its_delay_to_each_round_trip(api: Api, port: int, stream: str) -> None:
    with connect(port) as client:
        baseline = median_round_trip(client)
    api.add_toxic("echo", "latency", stream=stream, latency=100)
    with connect(port) as client:
        added = median_round_trip(client) - baseline
    assert 0.09 <= added <= 0.1 + SLOP, f"added {added * 1000:.0f} ms, expected 100 +/- 10"


def test_jitter_stays_within_its_bounds_and_varies(api: Api, port: int) -> None:
    api.add_toxic("echo", "latency", latency=100, jitter=30)
    with connect(port) as client:
        samples = [round_trip(client) for _ in range(10)]
    low, high = 0.1 - 0.03 - 0.01, 0.1 + 0.03 + SLOP
    assert all(low <= sample <= high for sample in samples), [round(s, 3) for s in samples]
    assert max(samples) - min(samples) > 0.005, "jitter did not vary the delay"


def test_latency_toxics_on_both_streams_stack(api: Api, port: int) -> None:
    api.add_toxic("echo", "latency", stream="upstream", latency=50)
    api.add_toxic("echo", "latency", stream="downstream", latency=50)
    with connect(port) as client:
        elapsed = median_round_trip(client)
    assert 0.1 <= elapsed <= 0.1 + SLOP, f"{elapsed * 1000:.0f} ms, expected 100"


def test_latency_toxics_on_one_stream_stack(api: Api, port: int) -> None:
    api.add_toxic("echo", "latency", name="first", latency=60)
    api.add_toxic("echo", "latency", name="second", latency=40)
    with connect(port) as client:
        elapsed = median_round_trip(client)
    assert 0.1 <= elapsed <= 0.1 + SLOP, f"{elapsed * 1000:.0f} ms, expected 100"


def test_latency_applies_to_a_live_connection_and_removal_restores_it(api: Api, port: int) -> None:
    with connect(port) as client:
        assert median_round_trip(client) < 0.05
        api.add_toxic("echo", "latency", latency=100)
        assert median_round_trip(client) >= 0.1
        api.remove_toxic("echo", "latency_downstream")
        assert median_round_trip(client) < 0.05


def test_latency_does_not_throttle(api: Api, port: int) -> None:
    """Chunks sent 20 ms apart each wait 100 ms, in parallel: not 100 ms after the previous."""
    api.add_toxic("echo", "latency", latency=100)
    with connect(port) as client:
        start = time.monotonic()
        for index in range(5):
            client.sendall(b"%d" % index)
            time.sleep(0.02)
        assert recv_exactly(client, 5) == b"01234"
        elapsed = time.monotonic() - start
    assert 0.18 <= elapsed <= 0.3, f"{elapsed * 1000:.0f} ms, expected ~180 (not 500)"


def test_removing_latency_flushes_held_data_at_once(api: Api, port: int) -> None:
    api.add_toxic("echo", "latency", latency=2000)
    with connect(port) as client:
        payload = b"held, then flushed"
        start = time.monotonic()
        client.sendall(payload)
        time.sleep(0.1)
        removal = api.remove_toxic("echo", "latency_downstream")
        assert removal.elapsed < 0.25, removal
        assert recv_exactly(client, len(payload), timeout=1.0) == payload
        elapsed = time.monotonic() - start
    assert elapsed < 0.5, f"held data came {elapsed * 1000:.0f} ms after sending"
