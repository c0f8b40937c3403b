"""One proxied TCP connection: two sockets and a direction of travel each way.

With no toxic on a direction, bytes go straight from one socket's `data_received` to the
other's `write` (the fast path: no task, no queue, no copy). With toxics, chunks are queued
with their arrival time and a task takes them through the toxics in order. The switch is
safe both ways: the fast path is used only while nothing is queued, so order never changes.

Backpressure is TCP's own: a direction stops reading from its source while its receiver's
send buffer is full or too much is queued, so a stalled peer (or a bandwidth toxic) slows
the sender down instead of growing memory, and no byte is dropped by the proxy itself.

A connection whose proxy has no toxic may be relayed by a worker process instead (see
`workers`); a toxic added to the proxy brings it back here before the API answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import struct
from collections import deque
from typing import Any, Protocol

from testbed.netfault import timebase, workers
from testbed.netfault.chain import ToxicChain
from testbed.netfault.links import Link, Links
from testbed.netfault.toxics import Chunk, Toxic

log = logging.getLogger("testbed.netfault")

QUEUE_HIGH = 1 << 20  # bytes queued on a direction before its source is paused
QUEUE_LOW = 256 << 10
# Toxics see data in chunks of at most this size (the reference reads 32 KiB at a time), so
# a paced chunk leaves in small steps and a rate holds over short windows too.
TOXIC_CHUNK = 32 << 10
CLOSE_GRACE_S = 5.0  # a closing socket whose peer will not read is aborted after this
_EOF = object()


class Endpoint(Protocol):
    """What a connection needs of the proxy that accepted it (a `Proxy`, which imports
    this module: the dependency points one way)."""

    name: str
    chain: ToxicChain
    counters: dict[str, dict[str, int]]
    connections: set[Connection]
    links: Links
    accepted: int  # clients accepted so far: a connection's ordinal

    def upstream_address(self) -> tuple[str, int]: ...


class Side(asyncio.Protocol):
    """One socket of the connection: the client's, or the one dialled to the upstream."""

    def __init__(self, conn: Connection, role: str) -> None:
        self.conn = conn
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.feeds: Direction | None = None  # where its bytes go; None until they may go
        self.write_paused = False
        self._holds: set[str] = set()
        self._drain: list[asyncio.Future[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        # Once per read: every call and lookup saved here is saved on every message.
        direction = self.feeds
        if direction is None:
            self.conn.hold_read(self, data)
        else:
            direction.feed(data)

    def eof_received(self) -> bool:
        self.conn.eof(self)
        return True  # keep the socket: the connection decides when to close it

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.conn.lost(self)
        self._wake_drainers()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.conn.other(self).hold("receiver-full")

    def resume_writing(self) -> None:
        self.write_paused = False
        self.conn.other(self).release("receiver-full")
        self._wake_drainers()

    def hold(self, reason: str) -> None:
        if not self._holds and self.transport is not None:
            self.transport.pause_reading()
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        self._holds.discard(reason)
        if not self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def drained_future(self) -> asyncio.Future[None]:
        """Done once this side takes writes again (at once if it does now)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.write_paused and self.transport is not None:
            self._drain.append(future)
        else:
            future.set_result(None)
        return future

    def _wake_drainers(self) -> None:
        for future in self._drain:
            if not future.done():
                future.set_result(None)
        if self._drain:
            timebase.current().changed()
        self._drain.clear()


class Direction:
    """One way of travel ('upstream' = client to server, 'downstream' = back) and its toxics."""

    def __init__(self, conn: Connection, stream: str, src: Side, dst: Side) -> None:
        self.conn = conn
        self.stream = stream
        self.src = src
        self.dst = dst
        self.pending: deque[Any] = deque()
        self.pending_bytes = 0
        self.task: asyncio.Task[None] | None = None
        self.active: list[tuple[Toxic, Any]] = []
        self._rolled_version = -1
        self._states: dict[str, Any] = {}
        self._wake: asyncio.Future[None] | None = None
        self._sleepers: set[asyncio.Future[bool]] = set()
        self._counters = conn.proxy.counters[stream]
        self._proxy = conn.proxy
        # What its task waits on while it waits (a toxic's timer, new data, a peer that
        # reads): the virtual clock asks whether it could run now, or holds bytes.
        self._parked_on: asyncio.Future[Any] | None = None
        self._parked_on_timer = False
        self._random: random.Random | None = None

    @property
    def random(self) -> random.Random:
        """Its own draws (jitter, toxicity, slice sizes): on the virtual clock seeded from
        the run's seed, the proxy, the connection's ordinal and the direction, so the same
        seed draws the same numbers whichever connection the machine served first."""
        if self._random is None:
            seed = timebase.current().seed
            self._random = random.Random(
                None
                if seed is None
                else f"{seed}:{self._proxy.name}:{self.conn.ordinal}:{self.stream}"
            )
        return self._random

    # --- the toxics this connection runs, rolled against their toxicity --------------

    def toxics(self) -> list[tuple[Toxic, Any]]:
        chain = self._proxy.chain
        if self._rolled_version != chain.version:
            self._roll(chain.stream(self.stream))
            self._rolled_version = chain.version
        return self.active

    def _roll(self, configured: list[Any]) -> None:
        now = self.now()
        active, states = [], {}
        for entry in configured:
            if entry.toxicity >= 1.0 or self.random.random() < entry.toxicity:
                state = self._states.get(entry.name)
                states[entry.name] = state if state is not None else entry.toxic.new_state(now)
                active.append((entry.toxic, states[entry.name]))
        self.active, self._states = active, states

    def current(self, name: str) -> Toxic | None:
        for toxic, _state in self.toxics():
            if toxic.name == name:
                return toxic
        return None

    def chain_changed(self, removed: list[Toxic]) -> None:
        """The proxy's toxics changed: wake sleeping toxics, re-roll, start timers."""
        was_active = {t.name for t, _ in self.active}
        if any(t.closes_on_removal and t.name in was_active for t in removed):
            self.conn.close()
            return
        for future in self._sleepers:
            if not future.done():
                future.set_result(False)
        self.activate()

    def activate(self) -> None:
        """Run the toxic path while there are toxics, even before any data (timers tick)."""
        if self.toxics() and self.task is None and not self.conn.closed:
            self.task = asyncio.get_running_loop().create_task(self._run())
        self._poke()

    # --- the Pipe a toxic sees -------------------------------------------------------

    def now(self) -> float:
        return timebase.current().now()

    @property
    def closed(self) -> bool:
        return self.conn.closed

    async def sleep(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        clock = timebase.current()
        handle = clock.call_at(clock.now() + seconds, _resolve, future, True)
        self._sleepers.add(future)
        try:
            return await self._park(future, holding=True)
        finally:
            handle.cancel()
            self._sleepers.discard(future)

    async def _park(self, future: asyncio.Future[Any], holding: bool = False) -> Any:
        """Wait for `future`, known to the virtual clock as parked (holding bytes if a
        toxic's timer keeps a chunk) until it is done."""
        self._parked_on, self._parked_on_timer = future, holding
        timebase.current().changed()
        try:
            return await future
        finally:
            self._parked_on, self._parked_on_timer = None, False

    def runnable(self) -> bool:
        """Its task has something to do now (it is not waiting, or what it waits on came)."""
        if self.task is None:
            return bool(self.pending)
        parked = self._parked_on
        return parked is None or parked.done()

    def holds(self) -> bool:
        """A toxic keeps a chunk of it until a later instant."""
        parked = self._parked_on
        return self._parked_on_timer and parked is not None and not parked.done()

    def only_black_hole(self) -> bool:
        """Its toxics are black holes alone (`timeout`s of 0): nothing this way arrives while
        they are there, and nothing else happens to what comes (no timer, no other toxic)."""
        toxics = self.toxics()
        return bool(toxics) and all(t.swallows and t.deadline(s) is None for t, s in toxics)

    def swallows(self) -> bool:
        """A toxic on it swallows what comes (its bytes never arrive)."""
        return any(toxic.swallows for toxic, _state in self.active)

    def flush(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            self.dst.write(chunk.data)
            self._counters["sent"] += len(chunk.data)

    def close(self) -> None:
        self.conn.close()

    def reset(self) -> None:
        self.conn.reset()

    def link(self, name: str) -> Link:
        return self.conn.proxy.links.get(name)

    # --- data in ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        size = len(data)
        counters = self._counters
        counters["received"] += size
        # The fast path: nothing queued, no task, no active toxic (rolled again only when
        # the chain changed since: toxics() is the slower way to the same answer).
        if (
            not self.pending
            and self.task is None
            and not (
                self.active if self._rolled_version == self._proxy.chain.version else self.toxics()
            )
        ):
            self.dst.write(data)
            counters["sent"] += size
            return
        now = self.now()
        for offset in range(0, len(data), TOXIC_CHUNK):  # as the reference reads them
            self.pending.append(Chunk(data[offset : offset + TOXIC_CHUNK], now))
        self.pending_bytes += len(data)
        if self.pending_bytes > QUEUE_HIGH:
            self.src.hold("queue")
        self._ensure_task()
        timebase.current().changed()

    def feed_eof(self) -> None:
        if not self.pending and self.task is None and not self.toxics():
            self.conn.close()  # no half-close: an EOF on one side closes the other
            return
        self.pending.append(_EOF)
        self._ensure_task()

    def _ensure_task(self) -> None:
        if self.task is None and not self.conn.closed:
            self.task = asyncio.get_running_loop().create_task(self._run())
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
            timebase.current().changed()

    async def _idle(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        clock = timebase.current()
        handle = clock.call_at(deadline, _resolve, self._wake, None) if deadline else None
        try:
            await self._park(self._wake)
        finally:
            if handle is not None:
                handle.cancel()
            self._wake = None

    # --- the toxic path ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._process()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("proxy %s: %s stream failed", self.conn.proxy.name, self.stream)
            self.conn.close()
        finally:
            self.task = None
            timebase.current().changed()

    async def _process(self) -> None:
        while not self.conn.closed:
            toxics = self.toxics()
            if not self.pending:
                if not toxics:
                    return  # back to the fast path
                deadlines = [d for t, s in toxics if (d := t.deadline(s)) is not None]
                await self._idle(min(deadlines) if deadlines else None)
                now = self.now()
                for toxic, state in self.toxics():
                    due = toxic.deadline(state)
                    if due is not None and due <= now:
                        toxic.on_deadline(self, state)
                continue
            item = self.pending.popleft()
            if item is _EOF:
                await self._eof(toxics)
                return
            self.pending_bytes -= len(item.data)
            if self.pending_bytes < QUEUE_LOW:
                self.src.release("queue")
            chunks = [item]
            for toxic, state in toxics:
                passed: list[Chunk] = []
                for chunk in chunks:
                    passed.extend(await toxic.on_chunk(chunk, self, state))
                    if self.conn.closed:
                        return
                chunks = passed
                if not chunks:
                    break
            self.flush(chunks)
            if self.dst.write_paused:
                await self._park(self.dst.drained_future())

    async def _eof(self, toxics: list[tuple[Toxic, Any]]) -> None:
        for toxic, state in toxics:
            if not await toxic.on_eof(self, state):
                while not self.conn.closed:  # swallowed: hold until the toxic goes
                    await self._idle(None)
                return
            if self.conn.closed:
                return
        self.conn.close()


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


class Connection:
    """A client accepted by a proxy and the connection dialled for it to the upstream.

    While its proxy has no toxic it may be lent to a worker process (`workers`), which
    relays it; this object then stands for it (counted, recalled, closed) until the worker
    gives the sockets back, when a new connection takes them over.
    """

    def __init__(self, proxy: Endpoint, ordinal: int | None = None) -> None:
        self.proxy = proxy
        if ordinal is None:  # a new client (a connection back from a worker keeps its own)
            ordinal = proxy.accepted = proxy.accepted + 1
        self.ordinal = ordinal
        self.client = Side(self, "client")
        self.server = Side(self, "upstream")
        self.up = Direction(self, "upstream", self.client, self.server)
        self.down = Direction(self, "downstream", self.server, self.client)
        self.server.feeds = self.down
        self.closed = False
        self.loan: workers.Loan | None = None
        self._dial: asyncio.Task[None] | None = None
        # Bytes (and EOFs, as None) read while they may not go on yet: before the upstream
        # answers, and while sockets given back by a worker are being attached.
        self._held: list[tuple[Side, bytes | None]] | None = []
        self._lending: list[socket.socket] | None = None  # sockets on their way to a worker
        self._letting_go = 0  # transports still to report they let go of their sockets
        self._abort = False
        # Set while its dial waits for a black hole both ways to go (`_connect_upstream`).
        self._hole: asyncio.Future[None] | None = None

    def other(self, side: Side) -> Side:
        return self.server if side is self.client else self.client

    def clock_state(self) -> tuple[bool, bool, bool]:
        """(busy, holds, due) as the virtual clock asks it: busy while it has work it can do
        now (bytes to take through its toxics, or unread bytes behind a chunk it holds:
        they are read and stamped before the time may move); holds while a toxic keeps a
        chunk of it until a later instant, or swallows what comes; due only in the first
        case (what a black hole swallows never arrives: nobody may wait for it to land)."""
        if self.closed or self.loan is not None:
            return False, False, False
        if self._hole is not None:  # not dialled: what comes is swallowed, as it would be
            return False, True, False
        if self._dial is not None and not self._dial.done():
            # A `slow_open` holds it; a dial itself is no work the clock waits for: the
            # client's call through it is running meanwhile, or blocked by a fault (a
            # frozen server that never accepts keeps a dial hanging for wall minutes).
            holds = self.up.holds()
            return False, holds, holds
        directions = (self.up, self.down)
        if any(d.runnable() for d in directions):
            return True, False, False
        if any(d.holds() for d in directions):
            busy = any(
                not side._holds and timebase.unread(side.transport)
                for side in (self.client, self.server)
            )
            return busy, True, True
        # Bytes into a black hole need no stamp: unread or not, they never arrive.
        return False, any(d.swallows() for d in directions), False

    def side_made(self, side: Side) -> None:
        if side is self.client and self._dial is None:
            # Nothing is read until the upstream answers. Held on the next turn of the loop:
            # a transport paused inside connection_made() never resumes on some Python
            # 3.11 releases (Debian bookworm's 3.11.2), which the proxy image runs.
            loop = asyncio.get_running_loop()
            loop.call_soon(self._hold_until_dialled)
            self.proxy.connections.add(self)
            self._dial = loop.create_task(self._connect_upstream())

    def _hold_until_dialled(self) -> None:
        if self._dial is not None and not self._dial.done():
            self.client.hold("dialling")

    async def _connect_upstream(self) -> None:
        host, port = self.proxy.upstream_address()
        while Toxic.extensions and self.up.only_black_hole() and self.down.only_black_hole():
            # Nothing can cross either way, and removing the hole closes the connection:
            # the upstream would only see a connection that never says a word. Dialled
            # anyway (as the reference does), a PostgreSQL server behind a long black hole
            # forks a backend for every attempt and ends it at the attempt's reset, each
            # heartbeat of an outage, for every caller. Dialled once something may cross;
            # meanwhile what the client sends is read and dropped, as the hole would drop
            # it, so that its close or reset ends the connection.
            self._hole = asyncio.get_running_loop().create_future()
            self.client.release("dialling")
            timebase.current().changed()
            try:
                await self._hole
            finally:
                self._hole = None
                if not self.closed:
                    self.client.hold("dialling")
                    timebase.current().changed()
        for toxic, _state in self.up.toxics():
            if toxic.type_name == "slow_open" and toxic.delay:
                await self.up.sleep(toxic.delay / 1000.0)  # a toxic change cuts it short
                if self.closed:
                    return
        try:
            await asyncio.get_running_loop().create_connection(lambda: self.server, host, port)
        except (OSError, ValueError) as exc:
            log.info("proxy %s: upstream %s unreachable: %s", self.proxy.name, port, exc)
            self.close()
            return
        if self.closed:
            self._close_side(self.server)
            return
        self.client.feeds = self.up
        self._replay_held()
        self.client.release("dialling")
        self.up.activate()
        self.down.activate()
        self._lend_if_plain()

    def hold_read(self, side: Side, data: bytes) -> None:
        if self._held is not None and self._hole is None:  # into the hole: gone
            self._held.append((side, data))

    def _replay_held(self) -> None:
        held, self._held = self._held or [], None
        for side, data in held:
            direction = side.feeds
            if direction is None:
                continue
            if data is None:
                direction.feed_eof()
            else:
                direction.feed(data)

    def eof(self, side: Side) -> None:
        if self._hole is not None:  # swallowed, as the hole swallows an EOF
            return
        if self._held is not None:
            self._held.append((side, None))
        elif side.feeds is not None:
            side.feeds.feed_eof()

    def lost(self, side: Side) -> None:
        if self._lending is not None:
            self._letting_go -= 1
            if self._letting_go == 0:
                self._lend()
            return
        if self.closed:
            return
        direction = side.feeds
        if direction is not None and direction.pending:
            # A peer gone at once (reset, its host killed): what the link was carrying
            # from it still arrives, then the close, as a WAN delivers what is in flight.
            # Closing now would drop it or not by how a kill's FIN or RST raced its reads.
            direction.feed_eof()
            return
        self.close()

    def chain_changed(self, stream: str, removed: list[Toxic]) -> None:
        if self.loan is not None or self._lending is not None:
            if self.loan is not None and self.proxy.chain.all():
                self.loan.recall()  # toxics apply to live connections
            return
        (self.up if stream == "upstream" else self.down).chain_changed(removed)
        if self._hole is not None:  # dialled at once if something may cross now
            _resolve(self._hole, None)

    # --- lent to a worker --------------------------------------------------------------

    def _lend_if_plain(self) -> None:
        """Lend the sockets to a worker if the proxy has no toxic and nothing is in flight
        here; the transports let go of them first (the duplicates keep them open)."""
        pool = workers.current()
        if pool is None or not pool.available() or self.closed or self.proxy.chain.all():
            return
        if any(d.pending or d.task is not None for d in (self.up, self.down)):
            return
        transports = [self.client.transport, self.server.transport]
        lendable = [t for t in transports if t is not None and not t.is_closing()]
        if len(lendable) < 2 or any(t.get_write_buffer_size() for t in lendable):
            return
        try:
            self._lending = [_duplicate(t) for t in lendable]
        except OSError:
            return
        self._letting_go = 2
        for transport in lendable:
            transport.abort()  # closes its descriptor only: nothing is sent to either peer

    def _lend(self) -> None:
        socks, self._lending = self._lending or [], None
        pool = workers.current()
        if self.proxy.chain.all() or pool is None:  # a toxic came meanwhile: stay here
            self._given_back(socks[0], socks[1], b"", b"")
            return
        counters = (self.up._counters, self.down._counters)
        self.loan = pool.lend(socks[0], socks[1], counters, self._given_back, self._ended)
        if self.loan is None:
            self._given_back(socks[0], socks[1], b"", b"")

    def _given_back(
        self, client: socket.socket, upstream: socket.socket, to_upstream: bytes, to_client: bytes
    ) -> None:
        """The sockets are back (with what the worker still owed each peer): a new
        connection carries on, through the toxics from now on."""
        self.loan = None
        if self.closed:
            _close_sockets([client, upstream], self._abort)
            return
        self.closed = True
        self.proxy.connections.discard(self)
        Connection(self.proxy, self.ordinal).adopt(client, upstream, to_upstream, to_client)

    def _ended(self) -> None:
        """The worker closed it: one peer closed or reset its end."""
        self.loan = None
        if not self.closed:
            self.closed = True
            self.proxy.connections.discard(self)

    def adopt(
        self, client: socket.socket, upstream: socket.socket, to_upstream: bytes, to_client: bytes
    ) -> None:
        """Take over a connected pair of sockets; what was read meanwhile waits in order."""
        self.proxy.connections.add(self)
        self.client.feeds = self.server.feeds = None
        self._dial = asyncio.get_running_loop().create_task(
            self._attach(client, upstream, to_upstream, to_client)
        )

    async def _attach(
        self, client: socket.socket, upstream: socket.socket, to_upstream: bytes, to_client: bytes
    ) -> None:
        loop = asyncio.get_running_loop()
        unattached = [(self.client, client), (self.server, upstream)]
        try:
            while unattached and not self.closed:
                side, sock = unattached[0]
                await loop.connect_accepted_socket(lambda side=side: side, sock)  # type: ignore[misc]
                unattached.pop(0)
        except OSError as exc:
            log.info("proxy %s: a connection back from a worker failed: %s", self.proxy.name, exc)
            self.close()
        finally:
            _close_sockets([sock for _side, sock in unattached], abort=True)
        if self.closed:
            return
        if to_upstream:
            self.server.write(to_upstream)  # owed from before: ahead of anything read since
        if to_client:
            self.client.write(to_client)
        self.client.feeds, self.server.feeds = self.up, self.down
        self._replay_held()
        self.up.activate()
        self.down.activate()

    def close(self, abort: bool = False) -> None:
        """Close both sockets: gracefully (what was written still goes), or at once."""
        if self.closed:
            return
        self.closed = True
        self._abort = abort
        self.proxy.connections.discard(self)
        if self.loan is not None:
            self.loan.close(abort)
        if self._lending is not None:
            _close_sockets(self._lending, abort)
            self._lending = None
        for side in (self.client, self.server):
            self._close_side(side, abort)
        for direction in (self.up, self.down):
            direction._poke()
            for future in direction._sleepers:
                _resolve(future, False)
        if self._dial is not None and not self._dial.done():
            self._dial.cancel()

    def _close_side(self, side: Side, abort: bool = False) -> None:
        transport = side.transport
        if transport is None:
            return
        if abort or transport.get_write_buffer_size() == 0:
            (transport.abort if abort else transport.close)()
            return
        transport.close()  # flushes first; a peer that never reads must not keep it forever
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)

    def reset(self) -> None:
        """Close both sockets with a TCP RST: the client (and the upstream) see ECONNRESET."""
        for side in (self.client, self.server):
            if side.transport is not None:
                with contextlib.suppress(OSError):
                    side.transport.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
        self.close(abort=True)


def _duplicate(transport: asyncio.BaseTransport) -> socket.socket:
    return socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))


def _close_sockets(socks: list[socket.socket], abort: bool) -> None:
    for sock in socks:
        if abort:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
