"""slow_close: data passes unchanged; the close that follows an EOF waits `delay` ms."""

from __future__ import annotations

from typing import Any

from testbed.netfault.toxics.base import Pipe, Toxic


class SlowClose(Toxic):
    type_name = "slow_close"
    attribute_names = ("delay",)

    async def on_eof(self, pipe: Pipe, state: Any) -> bool:
        start = pipe.now()
        toxic: Toxic | None = self
        while toxic is not None and (remaining := start + toxic.delay / 1000 - pipe.now()) > 0:
            if not await pipe.sleep(remaining):
                toxic = pipe.current(self.name)  # removed: close now; updated: new delay
        return True
