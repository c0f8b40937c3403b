"""timeout: the black hole. Every byte in its direction vanishes.

With `timeout` > 0 the connection is closed once that many ms pass without incoming data
(each swallowed chunk restarts the clock, as does the toxic's arrival); with 0 it is held
open forever, like a TCP connection across a dead WAN. An EOF vanishes too. Removing the
toxic closes the connection: what it swallowed is gone, and a peer must not resume a stream
with a hole in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testbed.netfault.toxics.base import Chunk, Pipe, Toxic


@dataclass
class _Clock:
    last: float  # loop time of the toxic's arrival or the last swallowed chunk


class Timeout(Toxic):
    type_name = "timeout"
    attribute_names = ("timeout",)
    closes_on_removal = True
    swallows = True

    def new_state(self, now: float) -> _Clock:
        return _Clock(last=now)

    async def on_chunk(self, chunk: Chunk, pipe: Pipe, state: Any) -> list[Chunk]:
        state.last = pipe.now()
        return []

    async def on_eof(self, pipe: Pipe, state: Any) -> bool:
        return False

    def deadline(self, state: Any) -> float | None:
        if self.timeout == 0:
            return None
        return state.last + self.timeout / 1000.0

    def on_deadline(self, pipe: Pipe, state: Any) -> None:
        pipe.close()
