"""limit_data: at most `bytes` bytes pass in this direction per connection (the chunk that
crosses the limit is cut), then the connection is closed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testbed.netfault.toxics.base import Chunk, Pipe, Toxic


@dataclass
class _Count:
    passed: int = 0


class LimitData(Toxic):
    type_name = "limit_data"
    attribute_names = ("bytes",)

    def new_state(self, now: float) -> _Count:
        return _Count()

    async def on_chunk(self, chunk: Chunk, pipe: Pipe, state: Any) -> list[Chunk]:
        room = self.bytes - state.passed
        if room >= len(chunk.data):
            state.passed += len(chunk.data)
            if state.passed >= self.bytes:
                pipe.flush([chunk])
                pipe.close()
                return []
            return [chunk]
        if room > 0:
            state.passed += room
            pipe.flush([Chunk(chunk.data[:room], chunk.received)])
        pipe.close()
        return []
