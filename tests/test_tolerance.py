"""A scenario the verdict cannot judge is refused, and the refusal's advice works: the clock
it names is accepted, and where no clock would do, it says what would."""

from __future__ import annotations

import re

import pytest

from testbed.clock import parse_factor
from testbed.verdict.tolerance import accepted_clock, refusal, tolerance_for

HOUR = 3600.0


def _advised_clock(message: str) -> float:
    match = re.search(r"`clock: (1h = [0-9.]+s)`", message)
    assert match, message
    return parse_factor(match.group(1))


def test_a_1h_window_at_1h_per_second_names_a_slower_clock_that_is_accepted() -> None:
    message = refusal(tolerance_for(HOUR), {"loss window": HOUR})
    assert message is not None
    assert "e.g. 1h = 1s" not in message  # the clock it already has
    factor = _advised_clock(message)
    assert factor < HOUR
    assert refusal(tolerance_for(factor), {"loss window": HOUR}) is None


@pytest.mark.parametrize(
    ("clock", "window"), [(86400.0, 8 * HOUR), (HOUR, 1.5 * HOUR), (28800.0, 9 * HOUR)]
)
def test_the_advised_clock_is_accepted_and_barely(clock: float, window: float) -> None:
    """Accepted, and the fastest readable one: a tenth of a wall second less per hour is
    refused again."""
    message = refusal(tolerance_for(clock), {"threshold": window})
    assert message is not None
    factor = _advised_clock(message)
    assert refusal(tolerance_for(factor), {"threshold": window}) is None
    wall_per_hour = HOUR / factor
    faster = HOUR / (wall_per_hour - (0.1 if wall_per_hour < 10 else 1))
    assert refusal(tolerance_for(faster), {"threshold": window}) is not None


def test_where_no_clock_is_slow_enough_the_advice_is_a_longer_window_or_heartbeat() -> None:
    message = refusal(tolerance_for(HOUR), {"loss window": 30 * 60.0})
    assert message is not None
    assert accepted_clock(60.0, 30 * 60.0) is None
    assert "no clock is slow enough with a 1m heartbeat" in message
    assert "make the loss window at least 40m, or set heartbeat_interval to at most 45s" in message
    assert refusal(tolerance_for(60.0, heartbeat_interval=45.0), {"w": 30 * 60.0}) is None
    assert refusal(tolerance_for(60.0), {"w": 40 * 60.0}) is None
