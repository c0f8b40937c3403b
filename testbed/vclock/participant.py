"""A component process's side of the virtual clock.

Every thread that can change what the run does is a *slot*: the main thread, and each
thread started with `spawn`. A slot is running, parked (until an instant, or until a
`Gate` opens), or in I/O (`io`: a target, the WAN route it takes, a deadline in scenario
time, and how to cancel it). Whenever the process's summary changes, it tells the
coordinator: busy while any slot runs, else the earliest instant it is parked until and the
I/O it waits on. A thread is marked running *before* it is woken, by whoever wakes it, and
that is reported before the waker goes on: a handoff inside a process never looks like
quiescence from outside.

Reports cost the run its pace (each is a message the coordinator reads while everyone
waits), so only what the coordinator can act on is sent. A busy process is busy, whatever
its other threads wait on. And a call just begun counts as running for its first
`FRESH_IO_WALL_S` of wall time: most calls answer within it, and only one still blocked
then (a black hole, a frozen server) is reported as I/O. Both are the same to the
coordinator (each holds the time); the difference is a message pair per call. A call the
faults in force block, as the coordinator's board posts them (`faultboard.py`), is reported
at once: it would only wait that moment out at every instant the fault lasts.

A process whose coordinator is gone exits: nobody would ever wake it again.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from testbed.errors import TestbedError
from testbed.vclock import wire
from testbed.vclock.faultboard import BoardReader
from testbed.vclock.wire import now_path

ORPHANED_EXIT = 70  # the run's clock went away
# A call still blocked after this much wall time is reported as I/O (until then it is work,
# as it most likely is): how late a blocked call is seen, never what the run does.
FRESH_IO_WALL_S = 0.002
T = TypeVar("T")


@dataclass(eq=False)
class Slot:
    state: str = "running"  # running | parked | io
    until: float | None = None
    event: threading.Event = field(default_factory=threading.Event)
    gate: Gate | None = None
    io: tuple[str, str | None, float, str | None] | None = None
    cancel: Callable[[], None] | None = None
    cancelled: bool = False
    fresh: float | None = None  # a call just begun: running, from this monotonic instant


class VirtualClock:
    """The run's time as one process sees it. Same reading interface as the realtime
    `Clock` (`now`, `sleep`, `sleep_until`), plus what pacing needs."""

    virtual = True

    def __init__(self, path: str, name: str, role: str) -> None:
        self.name = name
        self._lock = threading.RLock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
        except OSError as exc:
            raise TestbedError(
                f"{name}: cannot reach the run's virtual clock at {path}: {exc}"
            ) from None
        self._reader = wire.Reader(self._sock)
        wire.send(self._sock, {"op": "hello", "name": name, "role": role})
        first = self._reader.next()
        if first is None:
            raise TestbedError(f"{name}: the run's virtual clock closed before it answered")
        self._gen = int(first["gen"])
        with open(now_path(path), "rb") as shared:
            self._now_map = mmap.mmap(shared.fileno(), 8, access=mmap.ACCESS_READ)
        self._board = BoardReader(path)
        self._local = threading.local()
        main = Slot()
        self._local.slot = main
        self._slots: set[Slot] = {main}
        self._said: tuple[Any, ...] | None = None
        self._fresh = threading.Condition(self._lock)
        self._report(force=True)
        threading.Thread(target=self._listen, daemon=True, name="virtual-clock").start()
        threading.Thread(target=self._age_calls, daemon=True, name="virtual-clock-io").start()

    # --- reading and waiting -------------------------------------------------------------

    def now(self) -> float:
        return float(struct.unpack_from("d", self._now_map)[0])

    def sleep(self, seconds: float) -> None:
        self.sleep_until(self.now() + max(0.0, seconds))

    def sleep_until(self, instant: float) -> None:
        self._park(instant, None)

    def gate(self) -> Gate:
        return Gate(self)

    def mailbox(self) -> Mailbox[Any]:
        return Mailbox(self)

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        """A daemon thread that is a slot from before it starts until it returns."""
        slot = Slot()

        def body() -> None:
            self._local.slot = slot
            try:
                target()
            finally:
                with self._lock:
                    self._slots.discard(slot)
                    self._report()

        with self._lock:
            self._slots.add(slot)
            self._report()
        thread = threading.Thread(target=body, daemon=True, name=name)
        thread.start()
        return thread

    @contextlib.contextmanager
    def io(
        self,
        target: str,
        route: str | None,
        deadline: float,
        cancel: Callable[[], None],
        via: str | None = None,
    ) -> Iterator[None]:
        """A blocking call to `target` across `route` (None: within the site), through the
        WAN proxy named `via` if it crosses one. If the clock reaches `deadline` while it is
        blocked, `cancel()` is called: the call must then fail promptly."""
        slot = self._slot()
        # A call the faults block (as the board says) is reported at once: it would only
        # wait out its moment as a fresh call, at every instant the fault lasts.
        blocked = self._board.blocks(target, route)
        with self._lock:
            slot.state, slot.io, slot.cancel, slot.cancelled, slot.fresh = (
                "io",
                (target, route, deadline, via),
                cancel,
                False,
                None if blocked else time.monotonic(),
            )
            if blocked:
                self._report()
            else:
                self._fresh.notify()
        try:
            yield
        finally:
            with self._lock:
                slot.state, slot.io, slot.cancel, slot.fresh = "running", None, None, None
                self._report()

    def _slot(self) -> Slot:
        slot = getattr(self._local, "slot", None)
        if slot is None:
            raise RuntimeError(
                f"{threading.current_thread().name} waits on the virtual clock but was not"
                " started with clock.spawn: the clock cannot know when it is idle"
            )
        return slot

    def _park(self, until: float | None, gate: Gate | None, settled: bool = False) -> bool:
        """Park the calling thread until `until` or until `gate` opens; whether it opened.
        `settled`: until the run is quiescent at this very instant (everything else due now
        has parked, and every call still out is blocked), without the time moving on."""
        slot = self._slot()
        with self._lock:
            if gate is not None and gate.opened:
                gate.opened = False
                return True
            if settled:
                until = self.now()  # due now: woken once nothing else runs
            elif until is not None and until <= self.now():
                return False
            slot.state, slot.until, slot.gate = "parked", until, gate
            slot.event.clear()
            if gate is not None:
                gate.waiters.add(slot)
            self._report()
        slot.event.wait()
        with self._lock:
            slot.until, slot.gate = None, None
            if gate is None:
                return False
            gate.waiters.discard(slot)
            opened, gate.opened = gate.opened, False
            return opened

    def _run(self, slot: Slot) -> None:
        """Under the lock: `slot` runs from now on (its thread is about to be woken)."""
        slot.state = "running"
        slot.event.set()

    def _age_calls(self) -> None:
        """Calls still blocked `FRESH_IO_WALL_S` after they began are reported as I/O."""
        with self._lock:
            while True:
                began = [s.fresh for s in self._slots if s.fresh is not None]
                if not began:
                    self._fresh.wait()
                    continue
                now = time.monotonic()
                if min(began) + FRESH_IO_WALL_S > now:
                    self._fresh.wait(min(began) + FRESH_IO_WALL_S - now)
                    continue
                for slot in self._slots:
                    if slot.fresh is not None and slot.fresh + FRESH_IO_WALL_S <= now:
                        slot.fresh = None
                self._report()

    # --- the coordinator -----------------------------------------------------------------

    def _listen(self) -> None:
        while True:
            try:
                message = self._reader.next()
            except (OSError, ValueError):
                message = None
            if message is None:
                os._exit(ORPHANED_EXIT)
            with self._lock:
                self._gen = int(message["gen"])
                woke = self._wake_due() if message["op"] == "wake" else False
                if not woke:  # a thread woken answers for the process when it parks
                    self._report(force=True)

    def _wake_due(self) -> bool:
        """Under the lock: wake the threads due now, cancel the calls past their deadline;
        whether a thread now runs."""
        woke = False
        for slot in list(self._slots):
            if slot.state == "parked" and slot.until is not None and slot.until <= self.now():
                self._run(slot)
                woke = True
            elif (
                slot.state == "io"
                and slot.io is not None
                and slot.io[2] <= self.now()
                and not slot.cancelled
                and slot.cancel is not None
            ):
                slot.cancelled = True  # counts as busy until the call has failed
                with contextlib.suppress(Exception):
                    slot.cancel()
        return woke

    def _report(self, force: bool = False) -> None:
        """Under the lock: tell the coordinator what this process is doing, if it changed."""
        busy = any(
            s.state == "running" or (s.state == "io" and (s.cancelled or s.fresh is not None))
            for s in self._slots
        )
        wake, ios = None, []
        if not busy:  # what a busy process waits on is nothing the coordinator can act on
            wakes = [s.until for s in self._slots if s.state == "parked" and s.until is not None]
            ios = sorted(
                [list(s.io) for s in self._slots if s.state == "io" and s.io is not None],
                key=lambda io: (io[0], io[1] or "", io[2], io[3] or ""),
            )
            wake = min(wakes) if wakes else None
        summary = (busy, wake, ios, self._gen)
        if summary == self._said and not force:
            return
        if busy and not force and (self._said is None or self._said[3] < self._gen):
            # Not yet answered this generation: the coordinator counts it busy until it
            # does, so "busy" would tell it nothing (and cost it a message per wake).
            return
        self._said = summary
        with contextlib.suppress(OSError):
            wire.send(
                self._sock,
                {"op": "state", "gen": self._gen, "busy": busy, "wake": wake, "ios": ios},
            )


class Gate:
    """Something new to look at: one thread waits (until an instant, or for ever), others
    open it. An opening is kept until a wait consumes it."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.opened = False
        self.waiters: set[Slot] = set()

    def open(self) -> None:
        with self.clock._lock:
            self.opened = True
            for slot in list(self.waiters):
                if slot.state == "parked":
                    self.clock._run(slot)
            self.clock._report()

    def wait(self, until: float | None = None, settled: bool = False) -> bool:
        """Whether it was opened (False: `until`, or the instant's quiescence, came first)."""
        return self.clock._park(until, self, settled)


class Mailbox(Generic[T]):
    """A queue from one thread to another: `get` parks until an item or an instant."""

    def __init__(self, clock: VirtualClock) -> None:
        self._items: deque[T] = deque()
        self._gate = Gate(clock)
        self._clock = clock

    def put(self, item: T) -> None:
        with self._clock._lock:
            self._items.append(item)
            self._gate.open()

    def get(self, until: float | None = None, settled: bool = False) -> T | None:
        """The next item, or None once `until` has come with none (`settled`: once the run
        is quiescent at this instant with none: whoever could still put one is blocked)."""
        while True:
            with self._clock._lock:
                if self._items:
                    return self._items.popleft()
            if not self._gate.wait(until, settled) and not self._items:
                return None

    def drain(self) -> list[T]:
        with self._clock._lock:
            items = list(self._items)
            self._items.clear()
            return items
