"""Scenario time: what scenarios, ICON heartbeats and GIM thresholds are written in.

A scenario says "outage: 10h, threshold: 8h"; running it in real time would take a day. The
clock compresses: scenario seconds = (wall seconds since the epoch) x factor, and every
process of a run gets the same epoch and factor (`to_env` / `from_env`), so they agree on
what time it is. Components take the time from here, never from the wall clock, for any
domain decision (heartbeats, stuck sources, discards).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import ClassVar

from testbed.errors import TestbedError

DEFAULT_FACTOR = 3600.0  # 1 scenario hour per wall second
ENV = "TESTBED_CLOCK"

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")


def parse_duration(text: str | int | float) -> float:
    """`90s`, `15m`, `8h`, `8h1m`, `1d2h`, `250ms` (or a number of seconds) -> seconds."""
    if isinstance(text, bool):
        raise TestbedError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        if text < 0:
            raise TestbedError(f"duration {text} is negative")
        return float(text)
    compact = str(text).strip().replace(" ", "")
    if not compact:
        raise TestbedError("an empty string is not a duration")
    if re.fullmatch(r"\d+(?:\.\d+)?", compact):
        return float(compact)
    total, pos = 0.0, 0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact) or pos == 0:
        raise TestbedError(f"'{text}' is not a duration (examples: 90s, 15m, 8h, 8h1m)")
    return total


def format_duration(seconds: float) -> str:
    """Seconds as `8h1m`, `90s` -> `1m30s`, for reports and logs."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    whole = round(seconds)
    if whole == 0:
        return f"{seconds:.3g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


def parse_factor(text: str | float) -> float:
    """`1h = 1s` (scenario per wall) or a plain number -> scenario seconds per wall second."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        factor = float(text)
    else:
        scenario, sep, wall = str(text).partition("=")
        if not sep:
            raise TestbedError(f"clock '{text}' is not of the form '1h = 1s'")
        wall_s = parse_duration(wall)
        if wall_s <= 0:
            raise TestbedError(f"clock '{text}': the wall side must be longer than zero")
        factor = parse_duration(scenario) / wall_s
    if factor <= 0:
        raise TestbedError(f"clock '{text}' must make scenario time move forward")
    return factor


@dataclass(frozen=True)
class Clock:
    virtual: ClassVar[bool] = False
    epoch: float  # wall time (time.time()) at scenario time 0
    factor: float = DEFAULT_FACTOR  # scenario seconds per wall second

    @classmethod
    def start(cls, factor: float = DEFAULT_FACTOR, at: float = 0.0) -> Clock:
        """A clock reading `at` scenario seconds now."""
        return cls(time.time() - at / factor, factor)

    def now(self) -> float:
        return (time.time() - self.epoch) * self.factor

    def wall_seconds(self, scenario_seconds: float) -> float:
        return scenario_seconds / self.factor

    def wall_time_of(self, scenario_time: float) -> float:
        return self.epoch + scenario_time / self.factor

    def sleep(self, scenario_seconds: float) -> None:
        time.sleep(max(0.0, scenario_seconds / self.factor))

    def sleep_until(self, scenario_time: float) -> None:
        time.sleep(max(0.0, self.wall_time_of(scenario_time) - time.time()))

    def to_env(self) -> dict[str, str]:
        return {ENV: f"{self.epoch!r}:{self.factor!r}"}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Clock:
        raw = (env if env is not None else os.environ).get(ENV)
        if not raw:
            raise TestbedError(f"{ENV} is not set: a pipeline process needs the run's clock")
        epoch, _, factor = raw.partition(":")
        return cls(float(epoch), float(factor))
