"""The engine's view of the virtual clock: the realtime `Clock`'s reading interface over
the run's `Coordinator`, so the engine, the history and the run control read one time.

Sleeping is running the time: `sleep_until(t)` plays every instant before `t`, then holds
the clock at `t`, so what the engine does next (a step, a sample) happens at `t` exactly,
before anything else due then.
"""

from __future__ import annotations

from testbed.vclock.coordinator import Coordinator

VIRTUAL_FACTOR = 0.0  # a scenario's `factor` on the virtual clock: no wall time in a band


class EngineClock:
    virtual = True
    factor = VIRTUAL_FACTOR

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def now(self) -> float:
        return self.coordinator.now()

    def sleep_until(self, instant: float) -> None:
        self.coordinator.run_until(instant)

    def sleep(self, seconds: float) -> None:
        self.sleep_until(self.now() + max(0.0, seconds))

    def to_env(self) -> dict[str, str]:
        return self.coordinator.env()
