"""bandwidth: output paced to `rate` KB/s (1 KB = 1000 bytes); rate 0 stalls until changed.

Pacing keeps a schedule across chunks (the next byte may leave when the previous ones have
had their time), so the average rate holds whatever the chunk sizes. A rate change takes
effect on the chunk being held.

With a `group` (our extension; the reference ignores it), the schedule is not this
connection's own but the shared link of that name (`links.Link`): every connection of every
proxy whose bandwidth toxic names the group shares one `rate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testbed.netfault import timebase
from testbed.netfault.toxics.base import Chunk, Pipe, Toxic

PIECE = 16 * 1024  # large chunks are released in pieces so the output stays smooth
QUANTUM_S = 0.005  # a shared link's turn: this much of its time
# On the virtual clock a turn costs an instant of the run, not a timer: five seconds of
# scenario time keep a small message's wait far below the heartbeat (a minute), in a few
# hundred instants an hour for a base backup across a thin link; a turn may then carry a
# whole chunk (a toxic sees at most 32 KB at once: `link.TOXIC_CHUNK`).
QUANTUM_VIRTUAL_S = 5.0
PIECE_VIRTUAL = 32 * 1024
MIN_PIECE = 512
STALL_S = 3600.0


@dataclass
class _Schedule:
    free_at: float = 0.0  # loop time at which the link is free for the next byte


class Bandwidth(Toxic):
    type_name = "bandwidth"
    attribute_names = ("rate",)
    text_attribute_names = ("group",)

    def new_state(self, now: float) -> _Schedule:
        return _Schedule()

    async def on_chunk(self, chunk: Chunk, pipe: Pipe, state: Any) -> list[Chunk]:
        out = []
        toxic: Toxic | None = self
        data = chunk.data
        while data:
            size = _piece_size(toxic) if toxic is not None else PIECE
            piece, data = data[:size], data[size:]
            while toxic is not None:
                rate = toxic.rate
                if rate == 0:
                    if not await pipe.sleep(STALL_S):
                        toxic = pipe.current(self.name)
                    continue
                group = toxic.attributes.get("group")
                if group:
                    if await _through_link(pipe.link(group), len(piece), rate, pipe):
                        break
                    toxic = pipe.current(self.name)
                    continue
                # From when the link is free or the data arrived, not from when we woke up:
                # timer overshoot must not add up over a long transfer.
                start = max(state.free_at, chunk.received)
                release = start + len(piece) / (rate * 1000.0)
                remaining = release - pipe.now()
                if remaining > 0 and not await pipe.sleep(remaining):
                    toxic = pipe.current(self.name)
                    continue  # updated or removed: plan this piece again
                state.free_at = release
                break
            out.append(Chunk(piece, chunk.received))
            if toxic is None:  # removed: the rest passes untouched
                if data:
                    out.append(Chunk(data, chunk.received))
                break
        return out


def _piece_size(toxic: Toxic) -> int:
    """A shared link is booked in slices of `QUANTUM_S` of its time: a small message (an
    ICON batch, a query) then waits at most one slice per busy connection ahead of it,
    as behind a fair-queueing router, not behind a bulk flow's 16 KB pieces (82 ms at
    200 KB/s: minutes of scenario time). Alone on a connection, a piece is just pacing."""
    if not toxic.attributes.get("group") or not toxic.rate:
        return PIECE
    if timebase.current().virtual:
        return max(MIN_PIECE, min(PIECE_VIRTUAL, int(toxic.rate * 1000 * QUANTUM_VIRTUAL_S)))
    return max(MIN_PIECE, min(PIECE, int(toxic.rate * 1000 * QUANTUM_S)))


async def _through_link(link: Any, size: int, rate: int, pipe: Pipe) -> bool:
    """Book `size` bytes on the shared link and wait for their turn; False when a toxic
    change cut the wait short (the booking is given back and the piece planned again)."""
    release = link.book(size, rate, pipe.now())
    remaining = release - pipe.now()
    if remaining > 0 and not await pipe.sleep(remaining):
        link.cancel(release, size)
        return False
    link.sent(size)
    return True
