"""Relay processes for the connections of proxies that have no toxic.

One event loop relays every connection, and on a machine with few cores that one process
is where small request/response messages queue behind each other. So while a proxy has no
toxic, the server lends the sockets of each new connection (once dialled) to one of a few
worker processes, which only copies bytes both ways. Everything else stays in the server:
the API, the toxics, and every connection of a proxy that has any toxic.

The guarantees hold because a lent connection is only ever a plain relay:
- a toxic added to its proxy recalls it: the worker stops reading, and hands the sockets
  back with the bytes it had read but not yet written; the server relays it from then on,
  through the toxics. The API answers once the recalls are back (a worker never waits on
  the network, so that is a round trip between processes), so data sent after the answer
  meets the toxic, as on a connection that never left;
- the byte counters of lent connections come back with every recall and end, and are
  asked for before `/metrics` is served;
- a worker that dies takes its connections with it (their peers see them close), never
  the server or the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from testbed.netfault.channel import Channel, resolve

log = logging.getLogger("testbed.netfault")

WORKERS_ENV = "TESTBED_PROXY_WORKERS"
START_TIMEOUT_S = 5.0  # a worker not ready by then is left out until it is
SETTLE_TIMEOUT_S = 1.0  # a recall or a count not answered by then is logged and not awaited

Counters = dict[str, int]  # a proxy's {"received": n, "sent": n} for one direction


def default_count() -> int:
    """Workers to start: one per core, at most two (three and four were slower than two
    where measured, on two cores), none on one core (nothing to spread over)."""
    raw = os.environ.get(WORKERS_ENV, "")
    if raw.strip():
        try:
            return max(0, int(raw))
        except ValueError:
            raise SystemExit(f"error: {WORKERS_ENV}={raw} is not a number of workers") from None
    cores = len(_usable_cpus()) or os.cpu_count() or 1
    return min(2, cores) if cores > 1 else 0


@dataclass(eq=False)
class Loan:
    """A connection relayed by a worker, as the server sees it."""

    id: int
    worker: Worker
    counters: tuple[Counters, Counters]  # the proxy's, per direction: deltas land there
    on_return: Callable[[socket.socket, socket.socket, bytes, bytes], None]
    on_end: Callable[[], None]
    reported: list[int] = field(default_factory=lambda: [0, 0])
    recalled: asyncio.Future[None] | None = None
    owed: tuple[bytearray, bytearray] = field(default_factory=lambda: (bytearray(), bytearray()))

    def recall(self) -> None:
        """Ask for the sockets back (`on_return` gets them); `settled()` waits for it."""
        if self.recalled is None:
            self.recalled = asyncio.get_running_loop().create_future()
            self.worker.channel.send({"op": "recall", "id": self.id})

    def close(self, abort: bool) -> None:
        """Close the connection; its last counts come back with the worker's answer."""
        if self.recalled is None:  # else the sockets come back, and are closed then
            self.worker.channel.send({"op": "close", "id": self.id, "abort": abort})

    def count(self, totals: list[int]) -> None:
        for direction, total in enumerate(totals):
            delta = total - self.reported[direction]
            if delta:
                self.reported[direction] = total
                self.counters[direction]["received"] += delta
                self.counters[direction]["sent"] += delta  # a relay sends all it reads


@dataclass
class Forked:
    """A worker forked by the server before its event loop started (see `prefork`)."""

    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = -1
        return self.returncode


Preforked = tuple[socket.socket, Forked]  # the server's end of the channel, the process


def prefork(count: int, native: ModuleType | None = None) -> list[Preforked]:
    """Fork `count` workers now, while the server is one thread with no event loop: a fork
    costs a millisecond, where a new interpreter costs a tenth of a second of a core that
    a run bringing its servers up needs. Call it before the loop starts; `WorkerPool`
    takes the result. Where Unix sockets cannot carry sockets, none (relaying in the
    server). `native`: the C relay loop the workers use (see `relayloop`), or None."""
    from testbed.netfault import relay  # the workers' code, imported before the fork

    made: list[Preforked] = []
    if not hasattr(os, "fork"):
        return made
    for number, cpu in enumerate(_placement(count, pinned=native is None)):
        try:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except (OSError, AttributeError) as exc:  # no SEQPACKET sockets (macOS)
            log.warning("proxy worker %d not started (%s): relaying in the server", number, exc)
            break
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                mine.close()
                for other, _process in made:
                    other.close()
                relay.worker_main(theirs.detach(), cpu, native)
            except BaseException:
                logging.getLogger("testbed.netfault").exception("proxy worker %d failed", number)
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        made.append((mine, Forked(pid)))
    return made


def _placement(count: int, pinned: bool) -> list[int | None]:
    """The core each worker keeps to: its own when there is one per core and it relays in
    Python, else free.

    Left to move, the two workers of a two-core machine often share one core while the
    other runs the peers, and each then waits for the other (measured there: pgbench
    through two pinned workers made 5 to 25% more transactions than through two free
    ones, busy machine or not). On a larger machine they stay free: which cores to take
    is not ours to guess. With the C loop each connection has a thread of its own, which
    the scheduler places best beside the connection's peers: pinned, every thread of a
    worker would share its one core (measured on two cores, median of 14 interleaved
    runs: pgbench select-only through C threads kept to their worker's core made 0.87 of
    the transactions it made through free ones)."""
    cpus = sorted(_usable_cpus())
    keep = pinned and count == len(cpus)
    return [cpus[number] if keep else None for number in range(count)]


class Worker:
    """The server's handle on one worker process."""

    def __init__(self, pool: WorkerPool, number: int, forked: Preforked) -> None:
        self.pool = pool
        self.number = number
        self.loans: dict[int, Loan] = {}
        self.ready = False
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._counts: list[asyncio.Future[None]] = []
        mine, self.process = forked
        self.channel = Channel(mine, self._message, self._gone)

    def _message(self, header: dict[str, Any], payload: bytes, socks: list[socket.socket]) -> None:
        op = header["op"]
        if op == "ready":
            self.ready = True
            resolve(self.started)
        elif op == "counts":
            for loan_id, totals in header["counts"].items():
                if (loan := self.loans.get(int(loan_id))) is not None:
                    loan.count(totals)
            if self._counts:
                resolve(self._counts.pop(0))
        elif op == "owed":
            if (loan := self.loans.get(header["id"])) is not None:
                loan.owed[header["direction"]].extend(payload)
        elif op in ("returned", "ended"):
            loan = self.loans.pop(header["id"], None)
            if loan is None or (op == "returned" and len(socks) != 2):
                for sock in socks:
                    sock.close()
                if loan is not None:
                    loan.on_end()
                return
            loan.count(header["counts"])
            if op == "returned":
                loan.on_return(socks[0], socks[1], bytes(loan.owed[0]), bytes(loan.owed[1]))
            else:
                loan.on_end()
            if loan.recalled is not None:
                resolve(loan.recalled)

    def _gone(self) -> None:
        """The worker exited (or its channel broke): its connections went with it."""
        if not self.pool.closing:
            log.warning(
                "proxy worker %d stopped; its %d connections went with it",
                self.number,
                len(self.loans),
            )
        self.ready = False
        resolve(self.started)
        loans, self.loans = self.loans, {}
        for loan in loans.values():
            loan.on_end()
            if loan.recalled is not None:
                resolve(loan.recalled)
        for future in self._counts:
            resolve(future)
        self._counts.clear()

    def count(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self._counts.append(future)
        self.channel.send({"op": "count"})
        return future


class WorkerPool:
    """The worker processes of one proxy server."""

    def __init__(self, forked: list[Preforked]) -> None:
        self.forked = forked
        self.workers: list[Worker] = []
        self.closing = False
        self._next_id = 0

    async def start(self) -> None:
        """Take over the workers `prefork` made and wait (briefly) until they are ready, so
        that connections made as soon as the server answers are lent too."""
        self.workers = [Worker(self, number, each) for number, each in enumerate(self.forked)]
        if self.workers:
            await _bounded([w.started for w in self.workers], "start", START_TIMEOUT_S)

    def lend(
        self,
        client: socket.socket,
        upstream: socket.socket,
        counters: tuple[Counters, Counters],
        on_return: Callable[[socket.socket, socket.socket, bytes, bytes], None],
        on_end: Callable[[], None],
    ) -> Loan | None:
        """Hand a connection's two sockets to the least busy worker; None when none is
        ready (the caller keeps them)."""
        ready = [w for w in self.workers if w.ready and not w.channel.closed]
        if not ready:
            return None
        worker = min(ready, key=lambda w: len(w.loans))
        self._next_id += 1
        loan = Loan(self._next_id, worker, counters, on_return, on_end)
        worker.loans[loan.id] = loan
        worker.channel.send({"op": "lend", "id": loan.id}, socks=[client, upstream])
        return loan

    def available(self) -> bool:
        return any(w.ready and not w.channel.closed for w in self.workers)

    async def settled(self) -> None:
        """Until every recall asked for so far is back (bounded: a worker never waits on
        the network, so a late answer means a broken worker, not a slow peer)."""
        pending = [
            loan.recalled
            for worker in self.workers
            for loan in worker.loans.values()
            if loan.recalled is not None and not loan.recalled.done()
        ]
        if pending:
            await _bounded(pending, "recall")

    async def sync_counters(self) -> None:
        """Bring the proxies' byte counters up to date with what the workers relayed."""
        pending = [w.count() for w in self.workers if w.loans and not w.channel.closed]
        if pending:
            await _bounded(pending, "count")

    def metrics_text(self) -> str:
        lines = [
            "# HELP bc_testbed_proxy_worker_connections Connections a relay worker carries.",
            "# TYPE bc_testbed_proxy_worker_connections gauge",
        ]
        lines += [
            f'bc_testbed_proxy_worker_connections{{worker="{w.number}"}} {len(w.loans)}'
            for w in self.workers
            if w.ready
        ]
        return "\n".join(lines) + "\n"

    async def close(self) -> None:
        self.closing = True
        for worker in self.workers:
            worker.channel.close()
        for worker in self.workers:
            for _ in range(50):
                if worker.process.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            else:
                worker.process.kill()
                worker.process.wait()
        self.workers.clear()


async def _bounded(
    futures: list[asyncio.Future[None]], what: str, timeout: float = SETTLE_TIMEOUT_S
) -> None:
    _done, late = await asyncio.wait(futures, timeout=timeout)
    if late:
        log.warning("%d proxy worker %s answers late; not waiting for them", len(late), what)


_current: WorkerPool | None = None


def current() -> WorkerPool | None:
    """The running server's pool, if it has one (connections made elsewhere stay put)."""
    return _current


def install(pool: WorkerPool | None) -> None:
    global _current
    _current = pool


def _usable_cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set()
