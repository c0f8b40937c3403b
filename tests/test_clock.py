"""Scenario time: durations people write, and one clock shared by every process of a run."""

from __future__ import annotations

import time

import pytest

from testbed.clock import Clock, format_duration, parse_duration, parse_factor
from testbed.errors import TestbedError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("8h", 28800),
        ("8h1m", 28860),
        ("1d2h", 93600),
        ("250ms", 0.25),
        ("1.5h", 5400),
        ("42", 42),
        (28860, 28860),
    ],
)
def test_durations_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["8x", "h8", "", "8h 1q", "-5m", True])
def test_bad_durations_say_what_a_duration_looks_like(text: object) -> None:
    with pytest.raises(TestbedError):
        parse_duration(text)  # type: ignore[arg-type]


def test_durations_format_back() -> None:
    assert format_duration(28860) == "8h1m"
    assert format_duration(90) == "1m30s"


def test_the_compression_factor() -> None:
    assert parse_factor("1h = 1s") == 3600
    assert parse_factor("1h=100ms") == 36000
    with pytest.raises(TestbedError):
        parse_factor("fast")


def test_a_child_process_reads_the_same_time() -> None:
    clock = Clock.start(factor=3600, at=1000)
    copy = Clock.from_env(clock.to_env())
    assert copy == clock
    assert abs(copy.now() - clock.now()) < 1
    before = clock.now()
    time.sleep(0.05)
    assert clock.now() - before == pytest.approx(180, abs=60)  # 50 ms wall = 3 min scenario


def test_a_process_without_the_clock_is_refused() -> None:
    with pytest.raises(TestbedError, match="TESTBED_CLOCK"):
        Clock.from_env({})
