"""A relay worker process: copies the bytes of the connections the proxy server lends it,
both ways, and gives them back (with what it still owed each peer) when asked.

Forked by the server (`workers.prefork`) before its event loop starts; it ends when the
server closes the channel. Each connection is relayed either by the C loop on a thread of
its own (see `relayloop`) or by Python on the worker's event loop; the control messages,
recalls and endings are the same Python code either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable
from types import ModuleType
from typing import Any

from testbed.netfault import loop as loops
from testbed.netfault.channel import MAX_PAYLOAD, Channel, resolve

RECV_SIZE = 256 << 10  # one read (uvloop's own size): less than that cost a tenth of a stream
CLOSE_GRACE_S = 5.0  # as for the server's own connections: a peer that never reads
UP, DOWN = 0, 1  # client -> upstream, upstream -> client
NATIVE_STOP_TIMEOUT_S = 0.5  # for all C loops of a worker, woken, to return (at once)

log = logging.getLogger("testbed.netfault")


class Relay:
    """One lent connection inside a worker: read, write; what a socket will not take yet
    waits here (and its source is not read meanwhile), so a recall knows what is owed.

    With the C loop, the copying runs on a thread until the connection ends or a request
    (recall, close) wakes it; what it still owed comes back here, and from then on this
    relay goes on exactly as a Python one (it writes what is owed, gives back, closes)."""

    def __init__(self, worker: WorkerLoop, loan_id: int, socks: list[socket.socket]) -> None:
        self.worker = worker
        self.id = loan_id
        self.socks = socks  # client, upstream
        self.owed = [bytearray(), bytearray()]  # per direction: read, not yet written
        self.counts = array("Q", [0, 0])  # bytes read per direction (the C loop writes here)
        self.closed = False
        self.thread: threading.Thread | None = None
        self._wake: tuple[int, ...] = ()  # the C loop's wake-up: an eventfd (or a pipe)
        self._then: Callable[[], None] | None = None  # what to do once the C loop stops
        for sock in socks:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if worker.native is not None and self._start_native(worker.native):
            return
        for direction in (UP, DOWN):
            worker.loop.add_reader(self._source(direction), self._readable, direction)

    def _start_native(self, native: ModuleType) -> bool:
        """The C loop on a thread of its own; False (this connection relayed in Python)
        when the worker cannot have one more descriptor or thread."""
        try:
            self._wake = (os.eventfd(0),) if hasattr(os, "eventfd") else os.pipe()
            self.thread = threading.Thread(
                target=self._run_native, args=(native,), name=f"relay-{self.id}", daemon=True
            )
            self.thread.start()
        except (OSError, RuntimeError) as exc:
            log.warning("relay %d in Python: no thread for the C loop (%s)", self.id, exc)
            self.thread = None
            self._close_wake()
            return False
        return True

    def _run_native(self, native: ModuleType) -> None:
        """The thread: the C loop, then back to the event loop with what it still owed."""
        client, upstream = (sock.fileno() for sock in self.socks)
        try:
            reason, up, down = native.relay(client, upstream, self._wake[0], self.counts)
        except Exception:  # no memory for its answer: end the connection, not the worker
            log.exception("relay loop %d failed", self.id)
            reason, up, down = native.ENDED, b"", b""
        if reason < 0:
            log.warning("relay loop %d stopped (%s): ending it", self.id, os.strerror(-reason))
        ended = reason != native.WOKEN
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is ending
            self.worker.loop.call_soon_threadsafe(self._native_stopped, ended, up, down)

    def _native_stopped(self, ended: bool, up: bytes, down: bytes) -> None:
        self.thread = None
        self._close_wake()
        self.owed[UP] += up
        self.owed[DOWN] += down
        then, self._then = self._then, None
        if then is None or ended:
            then = self.end  # it ended: a request meanwhile finds it gone, as in Python
        then()

    def _close_wake(self) -> None:
        for fd in self._wake:
            os.close(fd)
        self._wake = ()

    def _stop_native(self, then: Callable[[], None]) -> bool:
        """True when a C loop still runs: it is woken, and `then` is called once it has
        stopped (the sockets are not touched before); the first request wins."""
        if self.thread is None:
            return False
        if self._then is None:
            self._then = then
            os.write(self._wake[-1], (1).to_bytes(8, "little"))  # eventfd: 8 bytes; pipe: any
        return True

    def wake_to_close(self) -> threading.Thread | None:
        """Wake a running C loop to abort the connection (the worker is ending); its thread,
        to wait for."""
        thread = self.thread
        self._stop_native(functools.partial(self.end, abort=True, tell=False))
        return thread

    def _source(self, direction: int) -> socket.socket:
        return self.socks[direction]

    def _sink(self, direction: int) -> socket.socket:
        return self.socks[1 - direction]

    def _readable(self, direction: int) -> None:
        view = self.worker.view
        try:
            size = self._source(direction).recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        if not size:
            self.end()  # no half-close: an EOF (or a reset) on one side closes the other
            return
        self.counts[direction] += size
        try:
            sent = self._sink(direction).send(view[:size])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.end()
            return
        if sent < size:
            self.owed[direction] += view[sent:size]
            self.worker.loop.remove_reader(self._source(direction))
            self.worker.loop.add_writer(self._sink(direction), self._writable, direction)

    def _writable(self, direction: int) -> None:
        owed = self.owed[direction]
        try:
            sent = self._sink(direction).send(owed)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            owed.clear()
            if self.closed:
                self._give_up(self._sink(direction))
            else:
                self.end()
            return
        del owed[:sent]
        if not owed:
            self.worker.loop.remove_writer(self._sink(direction))
            if self.closed:
                self._sink(direction).close()
            else:
                self.worker.loop.add_reader(self._source(direction), self._readable, direction)

    def _detach(self) -> None:
        self.worker.relays.pop(self.id, None)
        for sock in self.socks:
            self.worker.loop.remove_reader(sock)
            self.worker.loop.remove_writer(sock)

    def give_back(self) -> None:
        """Stop, and send the sockets back after what is still owed to each peer."""
        if self._stop_native(self.give_back):
            return
        self._detach()
        for direction, owed in enumerate(self.owed):
            for offset in range(0, len(owed), MAX_PAYLOAD):
                header = {"op": "owed", "id": self.id, "direction": direction}
                self.worker.channel.send(header, bytes(owed[offset : offset + MAX_PAYLOAD]))
        header = {"op": "returned", "id": self.id, "counts": list(self.counts)}
        self.worker.channel.send(header, socks=self.socks)

    def end(self, abort: bool = False, tell: bool = True) -> None:
        """Close both sockets; what is owed to one is still written first (unless aborting),
        for a few seconds at most."""
        if self.closed or self._stop_native(functools.partial(self.end, abort, tell)):
            return
        self.closed = True
        self._detach()
        if tell:
            self.worker.channel.send({"op": "ended", "id": self.id, "counts": list(self.counts)})
        for direction in (UP, DOWN):
            sink = self._sink(direction)
            if abort:
                with contextlib.suppress(OSError):
                    sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if self.owed[direction] and not abort:
                self.worker.loop.add_writer(sink, self._writable, direction)
                self.worker.loop.call_later(CLOSE_GRACE_S, self._give_up, sink)
            else:
                sink.close()

    def _give_up(self, sink: socket.socket) -> None:
        if sink.fileno() != -1:
            self.worker.loop.remove_writer(sink)
            sink.close()


class WorkerLoop:
    """A worker process: relays what it is lent until the server closes the channel."""

    def __init__(self, sock: socket.socket, native: ModuleType | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.native = native  # the C relay loop, or None to relay in Python
        self.view = memoryview(bytearray(RECV_SIZE))
        self.relays: dict[int, Relay] = {}
        self.stopped = self.loop.create_future()
        self.channel = Channel(sock, self._message, lambda: resolve(self.stopped))

    def _message(self, header: dict[str, Any], payload: bytes, socks: list[socket.socket]) -> None:
        op = header["op"]
        if op == "lend" and len(socks) == 2:
            self.relays[header["id"]] = Relay(self, header["id"], socks)
        elif op == "lend":
            for sock in socks:
                sock.close()
            self.channel.send({"op": "ended", "id": header["id"], "counts": [0, 0]})
        elif op == "recall":
            if (relay := self.relays.get(header["id"])) is not None:
                relay.give_back()
        elif op == "close":
            if (relay := self.relays.get(header["id"])) is not None:
                relay.end(abort=header["abort"])
        elif op == "count":
            counts = {str(i): list(r.counts) for i, r in self.relays.items()}
            self.channel.send({"op": "counts", "counts": counts})

    async def run(self) -> None:
        self.channel.send({"op": "ready"})
        await self.stopped
        threads = [t for r in list(self.relays.values()) if (t := r.wake_to_close())]
        deadline = time.monotonic() + NATIVE_STOP_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        await asyncio.sleep(0)  # the stopped C loops' hand-overs, which abort their sockets
        for relay in list(self.relays.values()):
            relay.end(abort=True, tell=False)


async def _worker_main(fd: int, native: ModuleType | None) -> None:
    await WorkerLoop(socket.socket(fileno=fd), native).run()


def _all_descriptors_allowed() -> None:
    """A connection on a C loop holds three descriptors in its worker (its two sockets and
    the loop's wake-up): the soft limit of a login (often 1024) goes up to the hard one."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main(fd: int, cpu: int | None, native: ModuleType | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops its workers itself
    _all_descriptors_allowed()
    if cpu is not None:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, {cpu})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    loops.run(_worker_main(fd, native))
