"""latency: every chunk leaves `latency` ms (+/- uniform `jitter`) after it arrived.

The wait is measured from the chunk's arrival, not from when the previous chunk left, so a
stream is delayed but not throttled; chunks stay in order. A chunk leaves stamped with its
release time, so latency toxics in a row add up.
"""

from __future__ import annotations

from typing import Any

from testbed.netfault.toxics.base import Chunk, Pipe, Toxic


class Latency(Toxic):
    type_name = "latency"
    attribute_names = ("latency", "jitter")

    def delay_s(self, pipe: Pipe) -> float:
        jitter = pipe.random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return max(0.0, self.latency + jitter) / 1000.0

    async def on_chunk(self, chunk: Chunk, pipe: Pipe, state: Any) -> list[Chunk]:
        toxic: Toxic | None = self
        release = chunk.received + self.delay_s(pipe)
        while toxic is not None and (remaining := release - pipe.now()) > 0:
            if not await pipe.sleep(remaining):
                current = pipe.current(self.name)  # removed: the chunk goes on now
                if isinstance(current, Latency) and current is not toxic:
                    release = chunk.received + current.delay_s(pipe)  # updated: re-plan
                toxic = current
        # The next latency toxic counts from here: two toxics of 60 and 40 ms make 100.
        return [Chunk(chunk.data, max(release, chunk.received))]
