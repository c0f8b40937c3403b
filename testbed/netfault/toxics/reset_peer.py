"""reset_peer: on the first chunk (or EOF) in its direction, swallow it, wait `timeout` ms,
then close the connection with a TCP RST (the receiver sees ECONNRESET).

Unlike the reference, toxicity is honoured (a connection that rolled "off" is untouched), and
a toxic added to a live connection resets it like any other.
"""

from __future__ import annotations

from typing import Any

from testbed.netfault.toxics.base import Chunk, Pipe, Toxic


class ResetPeer(Toxic):
    type_name = "reset_peer"
    attribute_names = ("timeout",)

    async def _reset(self, pipe: Pipe) -> None:
        start = pipe.now()
        toxic: Toxic | None = self
        while toxic is not None and (remaining := start + toxic.timeout / 1000 - pipe.now()) > 0:
            if not await pipe.sleep(remaining):
                toxic = pipe.current(self.name)
        if toxic is not None:
            pipe.reset()

    async def on_chunk(self, chunk: Chunk, pipe: Pipe, state: Any) -> list[Chunk]:
        await self._reset(pipe)
        return [] if pipe.closed else [chunk]

    async def on_eof(self, pipe: Pipe, state: Any) -> bool:
        await self._reset(pipe)
        return not pipe.closed
