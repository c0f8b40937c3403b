"""The run's virtual clock, owned by the engine: what time it is, who may run, and when the
time may jump.

Participants are processes (a source, an ICON, a GIM). Each connects to the coordinator's
socket, says who it is, and from then on reports its state: *busy* (a thread is working),
or idle with the earliest instant one of its threads is parked until and the I/O it is
blocked on (a target, the WAN route it takes, and a deadline in scenario time). Every
message the coordinator sends carries a generation, and a participant counts as busy until
it has answered the newest one: a participant just woken is never taken for an idle one.

The run is quiescent when every participant that is not frozen has answered, none is busy,
and every I/O it waits on is blocked: a route the faults black-hole, a frozen server. I/O
on a healthy route is running (the database is working), and so is anything a probe says
is still moving (a standby catching up). Only then does the time move, and only while the
engine runs it (`run_until`); otherwise it is held, so a step or a procedure costs no
scenario time. At each instant the participants due then are woken rank by rank (sources,
then ICONs, then GIMs), each rank until the run is quiescent again: nothing depends on which
process wins a race. The members of one rank run together, since none of them reads what
another writes at the same instant: each source feeds its own ICONs, each ICON writes its
own rows, and GIMs only read the IDBs, each into its own Info Mart.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import selectors
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from testbed.errors import TestbedError
from testbed.periods import next_on_grid
from testbed.vclock import wire
from testbed.vclock.faultboard import FaultBoard
from testbed.vclock.wire import now_path

ENV = "TESTBED_CLOCK"
# The WAN proxy first: bytes due at an instant arrive before anyone due then looks.
RANKS = {"proxy": 0, "source": 1, "icon": 2, "gim": 3}
PROBE_POLL_WALL_S = 0.005  # how often a probe that says "still moving" is asked again
WAKES_PER_INSTANT_MAX = 10_000  # a participant woken this often at one instant never parks
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes
SHORT_FOLDER_PREFIX = "testbed-clock-"  # a folder of our own when the run's is too deep

Blocked = Callable[[str, str | None], bool]
Faults = Callable[[], tuple[Iterable[str], Iterable[str]]]  # (frozen parts, black-holed routes)
Probe = Callable[[frozenset[str]], bool]  # given the proxies whose bytes are held
T = TypeVar("T")


@dataclass
class Member:
    """One participant as the coordinator knows it."""

    sock: socket.socket
    reader: wire.Reader
    name: str = ""
    rank: int = len(RANKS) + 1
    sent: int = 0  # generation of the newest message sent to it
    acked: int = -1  # generation of the newest message it has answered
    busy: bool = True
    wake: float | None = None
    ios: list[tuple[str, str | None, float, str | None]] = field(default_factory=list)
    held: frozenset[str] = frozenset()  # the WAN proxy: proxies whose bytes a toxic holds
    due: frozenset[str] = frozenset()  # ... of them, those whose bytes land at an instant
    wakes_here: int = 0  # wakes at the current instant

    @property
    def order(self) -> tuple[int, str]:
        return (self.rank, self.name)

    def answered(self) -> bool:
        return self.acked >= self.sent

    def due_at(self) -> float | None:
        """The earliest instant it must be woken at: a timer, or an I/O deadline."""
        times = [t for t in [self.wake, *(io[2] for io in self.ios)] if t is not None]
        return min(times) if times else None

    def describe(self) -> str:
        if not self.name:
            return "a participant that has not said who it is"
        if not self.answered():
            return f"{self.name} (has not answered the clock)"
        if self.busy:
            return f"{self.name} (busy)"
        waits = ", ".join(f"{t} via {r or 'its site'}" for t, r, _, _ in self.ios)
        return f"{self.name} (waiting on I/O to {waits})"


class Coordinator:
    """The clock service. `run_until` lets time run; everything else holds it."""

    def __init__(
        self,
        folder: Path,
        at: float = 0.0,
        blocked: Blocked | None = None,
        faults: Faults | None = None,
    ) -> None:
        """`blocked(target, route)`: whether the faults in force block a call (what the
        time may jump over). `faults()`: the same faults as names, posted for the
        participants whenever the time is let run (a hint: `faultboard.py`)."""
        self._now = float(at)
        self._blocked = blocked or (lambda _target, _route: False)
        self._faults = faults
        self._frozen: set[str] = set()
        self._probes: list[Probe] = []
        self._members: dict[socket.socket, Member] = {}
        self._target: float | None = None  # None: held
        self._error: str | None = None
        self._lock = threading.Condition()
        self._closing = False
        self.instants = 0  # instants the time has stopped at (a run's cost)
        self.wakes: dict[str, int] = {}  # wakes per participant
        self.busy_wall: dict[str, float] = {}  # wall seconds from its wake to quiescence
        self.reports: dict[str, int] = {}  # state reports read per participant
        self._woken: tuple[list[str], float] | None = None
        self._ticker: tuple[float, Callable[[], None]] | None = None
        self._next_tick = float("inf")
        self._ticking: threading.Thread | None = None  # a tick under way
        self.path = self._socket_path(folder)
        # The time itself is a double in a shared file: written only while the run is
        # quiescent and before anyone due is woken (a syscall away), so every reader sees
        # the instant it is woken at, and no message per participant and instant is needed.
        self._now_file = open(now_path(self.path), "w+b")  # noqa: SIM115 - closed by close()
        self._now_file.write(struct.pack("d", self._now))
        self._now_file.flush()
        self._now_map = mmap.mmap(self._now_file.fileno(), 8)
        self._board = FaultBoard(self.path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._poke_r, self._poke_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._poke_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="virtual-clock")
        self._thread.start()

    @staticmethod
    def _socket_path(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder.absolute() / "clock.sock"
        if len(str(path)) > SOCKET_PATH_MAX:  # a deep run folder: a short one of our own
            path = Path(tempfile.mkdtemp(prefix=SHORT_FOLDER_PREFIX)) / "clock.sock"
        path.unlink(missing_ok=True)
        return path

    # --- the engine's side ---------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """What a participant process needs in its environment to find this clock."""
        return {ENV: wire.ENV_PREFIX + str(self.path)}

    def now(self) -> float:
        return self._now

    def run_until(self, instant: float, wall_limit: float = 120.0) -> None:
        """Let the time run up to `instant` (every instant before it played out), then
        hold it there. A run that makes no progress for `wall_limit` wall seconds stalled:
        that is a defect of the testbed, named with whoever holds it up."""
        with self._lock:
            self._post_faults()
            self._target = max(instant, self._now)
            self._poke()
            self._wait_held(wall_limit)

    def run_while(self, work: Callable[[], T], moving: Probe, wall_limit: float = 600.0) -> T:
        """`work()` (on a thread of its own) with the time running, held again the moment
        it returns. Until then it counts as running while `moving(held)` says so: work that
        moves bytes through the WAN proxy lets the time jump only while the proxy holds
        them, so it ends at the instant its last byte is released, on any machine."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                box["value"] = work()
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc
            finally:
                with self._lock:
                    done.set()
                    self._target = None  # held at the instant it ended
                    self._lock.notify_all()
                    self._poke()

        def probe(held: frozenset[str]) -> bool:
            return not done.is_set() and moving(held)

        with self._lock:
            self._post_faults()
            self._probes.append(probe)
            self._target = float("inf")
            thread = threading.Thread(target=body, daemon=True, name="clock-held-work")
            thread.start()
            self._poke()
            try:
                self._wait_held(wall_limit)
            finally:
                self._probes.remove(probe)
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def run_until_released(self, proxies: frozenset[str], wall_limit: float = 120.0) -> None:
        """Let the time run until the WAN proxy holds no bytes of these proxies that are due
        to land (what a dead site sent just before it died lands where it was going; what
        a black hole swallowed never does), then hold it."""
        released = threading.Event()

        def moving(_held: frozenset[str]) -> bool:
            if self._due() & proxies:
                return False  # due at their release: the time may jump there
            released.set()
            return True  # until the waiting work below has returned

        self.run_while(lambda: released.wait(wall_limit), moving, wall_limit)

    def _post_faults(self) -> None:
        """The faults as the steps applied while the time was held left them."""
        if self._faults is not None:
            self._board.post(*self._faults())

    def _wait_held(self, wall_limit: float) -> None:
        """Under the lock: wait until the time is held again (or the clock failed)."""
        deadline = time.monotonic() + wall_limit
        progress = (self._now, self.instants)
        while self._target is not None and self._error is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if (self._now, self.instants) != progress:
                    progress = (self._now, self.instants)
                    deadline = time.monotonic() + wall_limit
                    continue
                self._target = None
                raise TestbedError(
                    f"the virtual clock stalled at t={self._now:.0f}s: "
                    + (self._holdups() or "nobody is due")
                )
            self._lock.wait(min(remaining, 1.0))
        if self._error is not None:
            raise TestbedError(self._error)

    def freeze(self, name: str) -> None:
        """`name` was stopped with SIGSTOP: it answers nothing and wakes for nothing."""
        with self._lock:
            self._frozen.add(name)

    def thaw(self, name: str) -> None:
        """`name` runs again: it is asked for a fresh state at once."""
        with self._lock:
            self._frozen.discard(name)
            for member in self._members.values():
                if member.name == name:
                    self._send(member, "now")
            self._poke()

    def add_probe(self, probe: Probe) -> None:
        """`probe(held)` is true while something outside the participants is still moving
        (`held`: the proxies whose bytes the WAN proxy holds until a later instant)."""
        with self._lock:
            self._probes.append(probe)

    def every(self, period: float, tick: Callable[[], None]) -> None:
        """`tick()` at every multiple of `period` the time reaches (the engine's samples), on
        a thread of the clock's: it costs no handoff to the engine and no instant of its own
        where someone is due anyway. It runs beside the WAN proxy and the sources due then,
        which change nothing a GIM or a process state says, and ends before anyone else is
        woken, the engine is handed the time, or the time moves on."""
        with self._lock:
            self._ticker = (period, tick)
            self._next_tick = next_on_grid(self._now, period)

    def stats(self) -> dict[str, object]:
        """What the run cost: instants, and per participant its wakes, wall time and
        state reports."""
        with self._lock:
            return {
                "instants": self.instants,
                "wakes": dict(sorted(self.wakes.items())),
                "busy_wall_s": {k: round(v, 3) for k, v in sorted(self.busy_wall.items())},
                "reports": dict(sorted(self.reports.items())),
            }

    def participants(self) -> list[str]:
        with self._lock:
            return sorted(m.name for m in self._members.values() if m.name)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._poke()
        self._thread.join(5)
        with self._lock:
            self._ticked()
        for member in list(self._members.values()):
            member.sock.close()
        self._listener.close()
        for fd in (self._poke_r, self._poke_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._now_map.close()
        self._now_file.close()
        self._board.close()
        self.path.unlink(missing_ok=True)
        now_path(self.path).unlink(missing_ok=True)
        if self.path.parent.name.startswith(SHORT_FOLDER_PREFIX):  # made for a deep folder
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the service ---------------------------------------------------------------------

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._poke_w, b".")

    def _serve(self) -> None:
        probing = False
        while True:
            events = self._selector.select(PROBE_POLL_WALL_S if probing else None)
            with self._lock:
                if self._closing:
                    return
                for key, _ in events:
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj == self._poke_r:
                        os.read(self._poke_r, 4096)
                    else:
                        self._receive(key.fileobj)  # type: ignore[arg-type]
                try:
                    probing = self._advance()
                except Exception as exc:  # a defect here must end the run, not hang it
                    self._error = f"the virtual clock failed: {exc!r}"
                    self._target = None
                    self._lock.notify_all()

    def _accept(self) -> None:
        sock, _ = self._listener.accept()
        sock.setblocking(False)
        self._members[sock] = Member(sock, wire.Reader(sock))
        self._selector.register(sock, selectors.EVENT_READ)

    def _receive(self, sock: socket.socket) -> None:
        member = self._members.get(sock)
        if member is None:
            return
        messages = member.reader.feed()
        if messages is None:  # it ended (or was killed): it holds nothing up any more
            self._selector.unregister(sock)
            sock.close()
            del self._members[sock]
            return
        for message in messages:
            if message["op"] == "hello":
                member.name = str(message["name"])
                member.rank = RANKS.get(str(message.get("role")), len(RANKS) + 1)
                self._send(member, "now")
            elif message["op"] == "state":
                self.reports[member.name] = self.reports.get(member.name, 0) + 1
                member.acked = max(member.acked, int(message["gen"]))
                member.busy = bool(message["busy"])
                member.wake = message["wake"]
                member.ios = [(str(t), r, float(d), via) for t, r, d, via in message["ios"]]
                member.held = frozenset(message.get("held") or ())
                member.due = frozenset(message.get("due") or ())

    def _send(self, member: Member, op: str) -> None:
        member.sent += 1
        data = wire.encode({"op": op, "t": self._now, "gen": member.sent})
        try:
            sent = member.sock.send(data)  # a few dozen bytes: whole, unless the buffer is full
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # it is gone; its end of file removes it
        if sent < len(data):  # rare: wait for room
            with contextlib.suppress(OSError):
                member.sock.setblocking(True)
                member.sock.sendall(data[sent:])
                member.sock.setblocking(False)

    def _active(self) -> list[Member]:
        return [m for m in self._members.values() if m.name not in self._frozen]

    def _held(self) -> frozenset[str]:
        """The proxies whose bytes the WAN proxy holds until a later instant, or swallows."""
        return frozenset().union(*(m.held for m in self._members.values()))

    def _due(self) -> frozenset[str]:
        """The proxies with bytes the WAN proxy releases at a later instant."""
        return frozenset().union(*(m.due for m in self._members.values()))

    def _waits(self, io: tuple[str, str | None, float, str | None], held: frozenset[str]) -> bool:
        """A call that cannot progress before an instant: the faults block it, or the
        proxy it goes through holds its bytes. Any other call is running."""
        target, route, _deadline, via = io
        return self._blocked(target, route) or (via is not None and via in held)

    def _holds_time(self, member: Member, held: frozenset[str]) -> bool:
        return (
            not member.name
            or not member.answered()
            or member.busy
            or any(not self._waits(io, held) for io in member.ios)
        )

    def _quiescent(self) -> bool:
        held = self._held()
        return not any(self._holds_time(m, held) for m in self._active())

    def _holdups(self) -> str:
        held = self._held()
        late = [
            m.describe()
            for m in sorted(self._active(), key=lambda m: m.order)
            if self._holds_time(m, held)
        ]
        return "; ".join(late)

    def _ticked(self) -> None:
        """Wait for the tick under way, if any."""
        if self._ticking is not None:
            self._ticking.join()
            self._ticking = None

    def _advance(self) -> bool:
        """Every move there is to make now: wake the next one due, or move the time on, as
        long as the run is quiescent and the time is running. Returns whether a probe asked
        to be polled again."""
        while True:
            if self._target is None or not self._quiescent():
                return False
            if self._woken is not None:
                names, since = self._woken
                for name in names:
                    self.busy_wall[name] = self.busy_wall.get(name, 0.0) + time.monotonic() - since
                self._woken = None
            # Those due now are woken before any probe is asked: the time does not move for
            # them, and nothing they do reads a standby. A probe is asked only before the
            # time moves on, or is handed back to the engine.
            due = (
                []
                if self._now >= self._target
                else sorted(
                    (m for m in self._active() if (d := m.due_at()) is not None and d <= self._now),
                    key=lambda m: m.order,
                )
            )
            if not due and self._probes:
                held = self._held()
                if any(probe(held) for probe in self._probes):
                    return True
            if self._now >= self._target or not due or due[0].rank >= RANKS["icon"]:
                self._ticked()  # what the tick reads may change from here on
            if self._now >= self._target:  # there: steps at this instant go before the rest
                self._target = None
                self._lock.notify_all()
                return False
            if due:
                rank = due[0].rank
                woken = [m for m in due if m.rank == rank]
                for member in woken:
                    member.wakes_here += 1
                    if member.wakes_here > WAKES_PER_INSTANT_MAX:
                        raise RuntimeError(
                            f"{member.name} was woken {member.wakes_here} times at t={self._now}"
                        )
                    self._send(member, "wake")
                    self.wakes[member.name] = self.wakes.get(member.name, 0) + 1
                self._woken = ([m.name for m in woken], time.monotonic())
                return False
            upcoming = [d for m in self._active() if (d := m.due_at()) is not None]
            instant = min([self._target, self._next_tick, *upcoming])
            if instant == float("inf"):
                return False  # nobody is ever due: wait for whoever holds the time
            self._now = instant
            self._now_map[:8] = struct.pack("d", self._now)
            self.instants += 1
            if self._ticker is not None and self._now >= self._next_tick:
                period, tick = self._ticker
                self._next_tick = next_on_grid(self._now, period)
                self._ticking = threading.Thread(target=tick, daemon=True, name="clock-tick")
                self._ticking.start()
            for member in self._members.values():
                member.wakes_here = 0
