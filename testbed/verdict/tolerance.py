"""How far from a window's edge an event may go either way, in scenario time.

A fault takes effect, and the pipeline acts on it, a little after the step that caused it:
an ICON notices an unreachable IDB at its next attempt, a data source an unanswering ICON
after one acknowledgement wait, GIM a site's return at its next cycle. Completeness moves
by heartbeats. So every edge of a predicted window is uncertain by one heartbeat interval
plus the longest of those delays at the run's clock (`timing.detection_delay`, which the
components' own waits are derived from). The formula is printed in every report.

At the default clock (1h = 1s, heartbeat 1m) it is 1m + max(1m, 0.1 s x 3600) = 7m, 1.5 %
of the default 8h threshold. A scenario whose tolerance would exceed `MAX_SHARE` of its
threshold, or of a window it states, cannot be judged and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.clock import format_duration
from testbed.pipeline.timing import DETECTION_WALL_S, detection_delay

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
        return (
            f"heartbeat {format_duration(self.heartbeat)} + detection max(heartbeat,"
            f" {DETECTION_WALL_S:g} wall s x clock {self.factor:g})"
            f" = {format_duration(self.seconds)}"
        )


def tolerance_for(factor: float, heartbeat_interval: float = DEFAULT_HEARTBEAT_S) -> Tolerance:
    return Tolerance(heartbeat_interval, detection_delay(factor, heartbeat_interval), factor)


def refusal(tolerance: Tolerance, windows: dict[str, float]) -> str | None:
    """Why a scenario cannot be judged (None if it can): a named window (the threshold, a
    stated loss window) that the tolerance would swallow too much of."""
    for name, window in windows.items():
        if window > 0 and tolerance.seconds > MAX_SHARE * window:
            return (
                f"at this clock the verdict's tolerance is {format_duration(tolerance.seconds)}"
                f" ({tolerance.formula()}), more than {MAX_SHARE:.0%} of the"
                f" {format_duration(window)} {name}: slow the clock down (e.g. 1h = 1s)"
                " or state longer windows"
            )
    return None
