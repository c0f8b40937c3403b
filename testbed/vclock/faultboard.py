"""What the faults in force block, posted where every participant can read it.

A call just begun counts as running for a moment of wall time before it is reported as
I/O (`participant.FRESH_IO_WALL_S`): most calls answer within it, and a report saved is a
message pair saved. But a call into a black hole or to a frozen server never answers, and
that moment is then waited out at every instant of an outage, twice a heartbeat (an ICON's
write, a GIM's extraction). The board tells a participant such a call is blocked before it
waits: it reports the call at once.

The board is a hint only. The coordinator decides what holds the time with the engine's
own view of the faults; a board read mid-update, or a stale one, costs a moment of wall
time or a message, never a different outcome.

Layout of the shared file: a sequence number (even: stable; odd: being written), the
length of the JSON that follows, then `{"frozen": [...], "holes": [...]}`.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterable
from pathlib import Path

SIZE = 4096
HEADER = struct.Struct("QI")  # sequence number, JSON length


def board_path(socket_path: Path | str) -> Path:
    """The shared file, beside the coordinator's socket."""
    return Path(socket_path).with_name("faults")


class FaultBoard:
    """The coordinator's side: posts the faults in force when they change."""

    def __init__(self, socket_path: Path | str) -> None:
        self.path = board_path(socket_path)
        with open(self.path, "w+b") as file:
            file.write(bytes(SIZE))
            file.flush()
            self._map = mmap.mmap(file.fileno(), SIZE)
        self._seq = 0
        self._posted: tuple[frozenset[str], frozenset[str]] | None = None

    def post(self, frozen: Iterable[str], holes: Iterable[str]) -> None:
        """The parts frozen and the routes black-holed, if they changed since last time."""
        state = (frozenset(frozen), frozenset(holes))
        if state == self._posted:
            return
        data = json.dumps({"frozen": sorted(state[0]), "holes": sorted(state[1])}).encode()
        if HEADER.size + len(data) > SIZE:  # more than a board holds: post nothing
            data = b"{}"
        self._seq += 1  # odd: a reader now ignores it
        HEADER.pack_into(self._map, 0, self._seq, 0)
        self._map[HEADER.size : HEADER.size + len(data)] = data
        self._seq += 1
        HEADER.pack_into(self._map, 0, self._seq, len(data))
        self._posted = state

    def close(self) -> None:
        self._map.close()
        self.path.unlink(missing_ok=True)


class BoardReader:
    """A participant's side: whether a call is blocked, as far as the board says."""

    def __init__(self, socket_path: Path | str) -> None:
        self._map: mmap.mmap | None = None
        try:
            with open(board_path(socket_path), "rb") as file:
                self._map = mmap.mmap(file.fileno(), SIZE, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # no board: every call waits out its moment
            pass
        self._seq = 0
        self._frozen: frozenset[str] = frozenset()
        self._holes: frozenset[str] = frozenset()

    def blocks(self, target: str, route: str | None) -> bool:
        self._refresh()
        return target in self._frozen or (route is not None and route in self._holes)

    def _refresh(self) -> None:
        if self._map is None:
            return
        seq, length = HEADER.unpack_from(self._map, 0)
        if seq == self._seq or seq % 2:
            return
        data = self._map[HEADER.size : HEADER.size + length]
        if HEADER.unpack_from(self._map, 0)[0] != seq:  # rewritten while read: next time
            return
        try:
            posted = json.loads(data)
        except ValueError:
            return
        self._seq = seq
        self._frozen = frozenset(posted.get("frozen", ()))
        self._holes = frozenset(posted.get("holes", ()))
