"""How far from a window's edge an event may go either way, in scenario time.

A fault takes effect, and the pipeline acts on it, a little after the step that caused it:
an ICON notices an unreachable IDB at its next attempt, a data source an unanswering ICON
after one acknowledgement wait, GIM a site's return at its next cycle. Completeness moves
by heartbeats. So every edge of a predicted window is uncertain by one heartbeat interval
plus the longest of those delays at the run's clock (`testbed.periods.detection_delay`, the
documented periods the components obey). The formula is printed in every report.

At the default clock (1h = 1s, heartbeat 1m) it is 1m + max(1m, 0.1 s x 3600) = 7m, 1.5 %
of the default 8h threshold; on the virtual clock it is the heartbeat alone, 1m. A scenario
whose tolerance would exceed `MAX_SHARE` of its threshold, or of a window it states, cannot
be judged and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from testbed.clock import format_duration
from testbed.periods import DETECTION_WALL_S, detection_delay

MAX_SHARE = 0.05  # beyond this share of a window, the check could no longer fail
DEFAULT_HEARTBEAT_S = 60.0
DEFAULT_THRESHOLD_S = 28860.0


@dataclass(frozen=True)
class Tolerance:
    heartbeat: float
    detection: float
    factor: float

    @property
    def seconds(self) -> float:
        return self.heartbeat + self.detection

    def formula(self) -> str:
        if self.factor == 0:
            return (
                f"heartbeat {format_duration(self.heartbeat)} (virtual time: a fault acts by"
                " the next heartbeat, and no wall time delays it)"
            )
        return (
            f"heartbeat {format_duration(self.heartbeat)} + detection max(heartbeat,"
            f" {DETECTION_WALL_S:g} wall s x clock {self.factor:g})"
            f" = {format_duration(self.seconds)}"
        )


def tolerance_for(factor: float, heartbeat_interval: float = DEFAULT_HEARTBEAT_S) -> Tolerance:
    """On the virtual clock (`factor` 0) every duty falls on the heartbeat grid and a step
    takes effect at its instant, before anyone due then runs: an edge moves by at most the
    one heartbeat to the next grid instant, with no detection delay on top."""
    if factor == 0:
        return Tolerance(heartbeat_interval, 0.0, factor)
    return Tolerance(heartbeat_interval, detection_delay(factor, heartbeat_interval), factor)


def refusal(tolerance: Tolerance, windows: dict[str, float]) -> str | None:
    """Why a scenario cannot be judged (None if it can): a named window (the threshold, a
    stated loss window) that the tolerance would swallow too much of. The advice is
    computed: the fastest clock that would be accepted, or, where no clock is slow enough
    (the heartbeat alone is too long for the window), what else would do."""
    for name, window in windows.items():
        if window > 0 and tolerance.seconds > MAX_SHARE * window:
            return (
                f"at this clock the verdict's tolerance is {format_duration(tolerance.seconds)}"
                f" ({tolerance.formula()}), more than {MAX_SHARE:.0%} of the"
                f" {format_duration(window)} {name}: {_advice(tolerance, window, name)}"
            )
    return None


def accepted_clock(heartbeat: float, window: float) -> float | None:
    """The fastest clock (scenario seconds per wall second) whose tolerance is within
    `MAX_SHARE` of `window`, a readable figure ("1h = 3s"); None if no clock is: the
    tolerance is never less than two heartbeats."""
    room = MAX_SHARE * window - heartbeat  # what the detection delay may take
    if room < heartbeat:
        return None
    wall_per_hour = 3600.0 * DETECTION_WALL_S / room  # wall seconds per scenario hour
    readable = (
        math.ceil(wall_per_hour * 10) / 10 if wall_per_hour < 10 else math.ceil(wall_per_hour)
    )
    return 3600.0 / readable


def _advice(tolerance: Tolerance, window: float, name: str) -> str:
    heartbeat = tolerance.heartbeat
    if tolerance.factor == 0:  # the virtual clock: the heartbeat is the whole tolerance
        return (
            f"make the {name} at least {format_duration(heartbeat / MAX_SHARE)}, or set"
            f" heartbeat_interval to at most {format_duration(MAX_SHARE * window)}"
        )
    factor = accepted_clock(heartbeat, window)
    if factor is None:
        return (
            f"no clock is slow enough with a {format_duration(heartbeat)} heartbeat: make the"
            f" {name} at least {format_duration(2 * heartbeat / MAX_SHARE)}, or set"
            f" heartbeat_interval to at most {format_duration(MAX_SHARE * window / 2)}"
        )
    return (
        f"slow the clock down to `clock: 1h = {3600.0 / factor:g}s` (or slower), or make"
        f" the {name} longer"
    )
