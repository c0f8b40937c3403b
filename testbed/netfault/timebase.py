"""The time the proxy's toxics run on: the wall clock, or a run's virtual clock.

On the wall clock a 100 ms latency holds each chunk 100 ms of wall time. A run on the
virtual clock (DESIGN.md, section 2) attaches the proxy to its clock (`POST /testbed/clock`,
an extension): from then on every toxic waits in scenario time, so `latency: 100ms` is what a
real 100 ms WAN does to an 8 h threshold, and a bandwidth of 500 KB/s moves 500 KB per
scenario second. The proxy is then a participant of the clock like a component: bytes a
toxic holds are due at their release, and the time may jump there once nothing else runs.

What it tells the clock, after every change:
- *busy* while any direction of any connection has work it can do now (bytes read and not
  yet through its toxics, a chunk just released), or a connection that holds bytes has more
  waiting unread in its socket (the proxy is about to read them: the time must not jump
  before they are stamped);
- otherwise idle, with the earliest instant a held chunk is due (`wake`) and the proxies
  whose bytes it holds or swallows (`held`): a component's call through one of them is
  waiting on the proxy, not on a working server, so it does not hold the time.

When the clock goes away (the run ended), the proxy goes back to wall time, going on from
the last scenario instant: what it still holds is released in wall time from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import mmap
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

from testbed.vclock import wire
from testbed.vclock.wire import now_path

NAME = "wan-proxy"
ROLE = "proxy"
BUSY_RECHECK_WALL_S = 0.001  # how soon a proxy busy with unread bytes looks again


class Handle(Protocol):
    def cancel(self) -> None: ...


class State(Protocol):
    """What the proxy server tells the time about its connections (`ProxyServer`)."""

    # (busy, proxies holding or swallowing bytes, those of them with bytes due to land)
    def clock_state(self) -> tuple[bool, list[str], list[str]]: ...


class WallTime:
    """Wall seconds. After a virtual clock went away, they go on from the instant it left
    (`offset`), so what the toxics still hold keeps one time line."""

    virtual = False
    seed: int | None = None  # the toxics draw from unseeded generators

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        # The loop's own clock, read to the microsecond: uvloop's `loop.time()` counts whole
        # milliseconds, which would release a chunk up to a millisecond before its latency.
        # Its timers may also fire that much early; the toxics wait again for what is left.
        return time.monotonic() + self.offset

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Handle:
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - self.now()), callback, *args)

    def changed(self) -> None:
        """Nothing to tell: the wall clock does not wait for anyone."""


class _Timer:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualTime:
    """The run's virtual clock as the proxy's event loop sees it."""

    virtual = True

    def __init__(
        self, path: str, state: State, on_gone: Callable[[float], None], seed: int = 0
    ) -> None:
        self.seed = seed  # every direction's draws derive from it
        self._state = state
        self._on_gone = on_gone
        self._loop = asyncio.get_running_loop()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(5.0)
        try:
            self._sock.connect(path)
            wire.send(self._sock, {"op": "hello", "name": NAME, "role": ROLE})
            self._reader = wire.Reader(self._sock)
            first = self._reader.next()
            with open(now_path(path), "rb") as shared:
                self._now_map = mmap.mmap(shared.fileno(), 8, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            self._sock.close()
            raise OSError(f"cannot reach the run's clock at {path}: {exc}") from None
        if first is None:
            self._sock.close()
            raise OSError(f"the run's clock at {path} closed before it answered")
        self._gen = int(first["gen"])
        self._sock.setblocking(False)
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._said: tuple[Any, ...] | None = None
        self._report_due = False
        self.closed = False
        self._loop.add_reader(self._sock.fileno(), self._readable)
        self.changed()

    def now(self) -> float:
        return float(struct.unpack_from("d", self._now_map)[0])

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Handle:
        timer = _Timer(callback, args)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        self.changed()
        return timer

    def changed(self) -> None:
        """Something may have changed what the proxy would tell the clock: say it once the
        loop has run what is ready."""
        if not self._report_due and not self.closed:
            self._report_due = True
            self._loop.call_soon(self._report)

    # --- the clock's side ----------------------------------------------------------------

    def _readable(self) -> None:
        messages = self._reader.feed()
        if messages is None:
            self.close()
            return
        for message in messages:
            self._gen = int(message["gen"])
            self._said = None  # every message is answered, even with the same state
            if message["op"] == "wake":
                self._fire_due()
        self.changed()

    def _fire_due(self) -> None:
        now = self.now()
        while self._timers and self._timers[0][0] <= now:
            _when, _seq, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback(*timer.args)

    def _wake(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def _report(self) -> None:
        self._report_due = False
        if self.closed:
            return
        busy, held, due = self._state.clock_state()
        summary = (busy, None if busy else self._wake(), sorted(held), sorted(due), self._gen)
        if summary != self._said:
            self._said = summary
            message = {
                "op": "state",
                "gen": self._gen,
                "busy": busy,
                "wake": summary[1],
                "ios": [],
                "held": summary[2],
                "due": summary[3],
            }
            try:  # whole or not at all: the clock's thread always reads, so this is brief
                self._sock.setblocking(True)
                wire.send(self._sock, message)
                self._sock.setblocking(False)
            except OSError:
                self.close()
                return
        if busy:  # look again soon: bytes being read end without telling us
            self._report_due = True
            self._loop.call_later(BUSY_RECHECK_WALL_S, self._report)

    def close(self) -> None:
        """Back to the wall clock, going on from the last instant (`on_gone` gets it):
        what is held is released in wall time from there."""
        if self.closed:
            return
        self.closed = True
        last = self.now()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._now_map.close()
        timers, self._timers = self._timers, []
        self._on_gone(last)
        for when, _seq, timer in sorted(timers, key=lambda t: (t[0], t[1])):
            if not timer.cancelled:
                current().call_at(when, timer.callback, *timer.args)


def unread(transport: asyncio.BaseTransport | None) -> bool:
    """Bytes wait unread in this transport's socket (an end of file does not count: once
    read, it stays readable for ever)."""
    if transport is None or transport.is_closing():
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (OSError, ValueError):
        return False  # nothing to read now (EAGAIN), or the socket is gone


_current: WallTime | VirtualTime = WallTime()


def current() -> WallTime | VirtualTime:
    return _current


def attach(path: str, state: State, seed: int = 0) -> None:
    """Run the toxics on the virtual clock at `path` from now on, their draws seeded by
    `seed` (OSError: the clock is unreachable)."""
    global _current
    if isinstance(_current, VirtualTime):
        _current.close()
    _current = VirtualTime(path, state, _went_away, seed)


def detach() -> None:
    """Back to wall time, going on from the virtual clock's last instant."""
    if isinstance(_current, VirtualTime):
        _current.close()


def _went_away(last: float) -> None:
    global _current
    _current = WallTime(offset=last - time.monotonic())
