"""The data sources and the ground truth.

One data source per site emits that site's interactions: Poisson arrivals at `rate` per
scenario hour, deterministic from the seed (the same seed gives the same ids, times and
payloads). Every emitted event is first appended to the site's ledger (JSON lines, fsync'd
per batch), then pushed to both ICONs of the site's pair. An ICON that does not take a
batch misses it (the real data source caches only briefly); its partner covers it. The
ledger, and only the ledger, is what the checkers call the truth.

A data source that is not running emits nothing: calls that were not taken never happened,
so a restarted source goes on from the schedule's next event after the current time, and
so does one woken from a freeze.

Every batch tells its ICON since when that ICON has had every event of this source (its
*vouching start*): the source's first call for a new stream, or, after the ICON missed a
batch, the watermark of the probe it answered again. ICON's heartbeats carry it, so GIM
counts a member's heartbeats only for the span it holds whole (DESIGN.md: a restarted
ICON proves completeness only from its restart on). A restarted source keeps it: the
delivery log says whether the ICON took everything the ledger holds.

Run as `python -m testbed.pipeline.workload CONFIG.json`, with the run's clock in the environment.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import random
import selectors
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.clock import Clock
from testbed.periods import ack_timeout, next_on_grid
from testbed.pipeline.component import load_config, run_clock, setup_logging, write_status
from testbed.vclock.participant import Gate, VirtualClock

TICK_S = 0.01  # wall seconds between batches (realtime clock)
BACKSTOP_WALL_S = 60.0  # virtual clock: a defect, not a fault, if an ICON is this slow


@dataclass(frozen=True)
class Event:
    id: str
    site: str
    ts: float  # scenario seconds
    payload: str

    def to_json(self) -> str:
        """Its JSON line's body (what `asdict` gives, without its deep copy per field)."""
        return json.dumps(
            {"id": self.id, "site": self.site, "ts": self.ts, "payload": self.payload}
        )


def schedule(
    site: str, rate_per_hour: float, seed: int, prefix: str | None = None
) -> Iterator[Event]:
    """The site's events, in time order, for ever. A second stream at the same site (the
    calls of a lost site, moved here) has its own `prefix`, so ids never collide."""
    prefix = prefix or site
    rng = random.Random(f"{seed}:{prefix}")
    mean_gap = 3600.0 / rate_per_hour
    t, i = 0.0, 0
    while True:
        t += rng.expovariate(1.0 / mean_gap)
        yield Event(f"{prefix}-{i:09d}", site, t, f"call {i} at {site} agent {rng.randrange(500)}")
        i += 1


class Ledger:
    """Append-only, fsync'd: an event is in the ledger before any ICON hears of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the source

    def append(self, events: list[Event]) -> None:
        self._file.write("".join(e.to_json() + "\n" for e in events))
        self._file.flush()
        os.fsync(self._file.fileno())

    @staticmethod
    def read(path: Path) -> list[Event]:
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8")
        # A torn last line was never acknowledged to anyone: only whole lines count. One
        # parse of them all as a JSON array: a run's ledger is read at every verdict.
        whole = text[: text.rfind("\n") + 1]
        if not whole:
            return []
        return [Event(**fields) for fields in json.loads("[" + whole.replace("\n", ",")[:-1] + "]")]


class IconLink:
    """The source's connection to one ICON, on a thread of its own, so that a frozen or slow
    ICON holds up its own deliveries only, never its partner's.

    Batches go out in order, one awaiting its acknowledgement at a time. One that does not
    come within `ack_timeout` (a heartbeat interval scaled to the clock, see
    `periods.ack_timeout`) marks the ICON unreachable: the connection is dropped, and every
    batch that waits until the ICON answers again is a miss (the real data source caches
    only briefly); the partner covers it. Outcomes go to the deliveries log, one line per
    batch and ICON.

    On the virtual clock the link is a slot of the clock: it parks on a gate until a batch
    is offered, and an exchange with the ICON is I/O whose deadline (one heartbeat
    interval of scenario time) only a frozen ICON can reach."""

    def __init__(
        self,
        name: str,
        port: int,
        ack_timeout: float,
        record: Callable[[list[Event], str, bool, float], None],
        host: str = "127.0.0.1",
        clock: VirtualClock | None = None,
        since: float = 0.0,
    ) -> None:
        self.clock = clock
        self.gate: Gate | None = clock.gate() if clock is not None else None
        self.thread: threading.Thread | None = None
        self.name = name
        self.host = host  # the ICON's container name when the pipeline runs in containers
        self.port = port
        self.ack_timeout = ack_timeout
        self.record = record
        self.sock: socket.socket | None = None
        self.reader: Any = None
        self.pending: collections.deque[tuple[list[Event], bytes, bytes]] = collections.deque()
        self.since = since  # the ICON has every event of this source from here on
        self.ready = threading.Condition()
        self.closing = False
        # On the virtual clock: how the clock's deadline reaches a connect under way.
        self._cancel_r = self._cancel_w = -1
        if clock is not None:
            self._cancel_r, self._cancel_w = os.pipe()
            os.set_blocking(self._cancel_r, False)
            os.set_blocking(self._cancel_w, False)

    def start(self) -> None:
        if self.clock is not None:
            self.thread = self.clock.spawn(self.run, f"link-{self.name}")
        else:
            self.thread = threading.Thread(target=self.run, daemon=True, name=f"link-{self.name}")
            self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def offer(self, batch: list[Event], watermark: float, body: bytes) -> None:
        header = f"B {watermark!r} {len(batch)} ".encode()
        with self.ready:
            self.pending.append((batch, header, body))
            self.ready.notify()
        if self.gate is not None:
            self.gate.open()

    def finish(self) -> None:
        """Deliver what is pending, then end (the source is stopping)."""
        with self.ready:
            self.closing = True
            self.ready.notify()
        if self.gate is not None:
            self.gate.open()

    def _take(self, healthy: bool) -> list[tuple[list[Event], bytes, bytes]] | None:
        """What to deliver next (everything waiting, once the ICON failed); None: done."""
        while True:
            with self.ready:
                if self.pending:
                    waiting = list(self.pending) if not healthy else [self.pending[0]]
                    for _ in waiting:
                        self.pending.popleft()
                    return waiting
                if self.closing:
                    return None
                if self.gate is None:
                    self.ready.wait()
                    continue
            self.gate.wait()

    def _framed(self, header: bytes, body: bytes) -> bytes:
        """The batch as sent: its header ends with this ICON's vouching start."""
        return header + repr(self.since).encode() + b"\n" + body

    def exchange(self, payload: bytes, count: int) -> bool:
        """Send a batch and wait for its acknowledgement: whether the ICON took it."""
        if self.clock is None:
            return self.send(payload) and self.acked(count)
        with contextlib.suppress(BlockingIOError):
            os.read(self._cancel_r, 64)  # a cut of an earlier exchange, if any
        with self.clock.io(self.name, None, self.clock.now() + self.ack_timeout, self._cut):
            return self.send(payload) and self.acked(count)

    def _cut(self) -> None:
        """The deadline passed (the clock calls this): the blocked exchange fails now."""
        with contextlib.suppress(OSError):
            os.write(self._cancel_w, b"x")  # a connect under way
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        healthy = True  # an ICON that failed gets data again only after it answers a probe
        while True:
            waiting = self._take(healthy)
            if waiting is None:
                break
            if healthy:
                batch, header, body = waiting[0]
                delivered = self.exchange(self._framed(header, body), len(batch))
                healthy = delivered
                if batch:
                    self.record(batch, self.name, delivered, self.since)
                continue
            # Unreachable or frozen: what waited is missed. A probe (the newest batch's
            # watermark, no events) tells whether it answers again; a frozen ICON finds no
            # events in its socket when it wakes, as a down ICON would have taken none. It
            # vouches from the probe's watermark on: it holds nothing it missed.
            for batch, _, _ in waiting:
                if batch:
                    self.record(batch, self.name, False, self.since)
            header = waiting[-1][1]
            self.since = float(header.split()[1])
            healthy = self.exchange(self._framed(b" ".join(header.split()[:2]) + b" 0 ", b""), 0)
        self.close()

    def send(self, payload: bytes) -> bool:
        try:
            if self.sock is None:
                if self.clock is None:
                    sock = socket.create_connection((self.host, self.port), timeout=0.2)
                    sock.settimeout(self.ack_timeout)
                else:
                    sock = self._dial()
                    sock.settimeout(BACKSTOP_WALL_S)  # the deadline is the clock's
                self.sock = sock
                self.reader = self.sock.makefile("rb")
            self.sock.sendall(payload)
            return True
        except OSError:
            self.close()
            return False

    def _dial(self) -> socket.socket:
        """A connect that the clock's deadline ends. A frozen ICON accepts nothing, and
        once its listen backlog is full (a probe a heartbeat: about two hours) a connect
        waits for the ICON's SYN-ACK for ever: a wall timeout there held the time a
        fraction of a second at every heartbeat of the freeze."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            error = sock.connect_ex(address)
            if error not in (0, errno.EINPROGRESS):
                raise OSError(error, os.strerror(error))
            if error:
                with selectors.DefaultSelector() as selector:
                    selector.register(sock, selectors.EVENT_WRITE)
                    selector.register(self._cancel_r, selectors.EVENT_READ)
                    ready = {key.fd for key, _ in selector.select(BACKSTOP_WALL_S)}
                if sock.fileno() not in ready:
                    raise TimeoutError(f"no connection to {self.name} by the call's deadline")
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error))
            sock.setblocking(True)
            return sock
        except BaseException:
            sock.close()
            raise

    def acked(self, count: int) -> bool:
        try:
            answer = self.reader.readline()
            if answer.split() == [b"OK", str(count).encode()]:
                return True
        except (OSError, AttributeError):
            pass
        self.close()
        return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.reader = None


class DeliveryLog:
    """Which ICON acknowledged which batch: one JSON line per batch and ICON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the source
        self._lock = threading.Lock()
        self.last: dict[str, bool] = {}

    def record(self, batch: list[Event], icon: str, delivered: bool, since: float) -> None:
        line = {"first": batch[0].id, "last": batch[-1].id, "count": len(batch)}
        with self._lock:
            self.last[icon] = delivered
            self._file.write(
                json.dumps({**line, "delivered": {icon: delivered}, "since": since}) + "\n"
            )
            self._file.flush()

    def vouching(self, icons: list[str], ledger: list[Event], start: float) -> dict[str, float]:
        """Per ICON, since when it has had every event of this source, as a source
        (re)starting at `start` can tell: from its stream's start if it never emitted; else
        what the ICON's newest batch said, if the ICON took the ledger's last event (no call
        happened while the source was down); else from `start` (the ICON missed a batch, or
        the source died before it answered)."""
        if not ledger:
            return dict.fromkeys(icons, 0.0)
        newest: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    for icon in record["delivered"]:
                        newest[icon] = record
        vouch = {}
        for icon in icons:
            record = newest.get(icon)
            whole = (
                record is not None
                and record["delivered"][icon]
                and record["last"] == ledger[-1].id
                and "since" in record
            )
            vouch[icon] = float(record["since"]) if whole and record else start
        return vouch


def run_source(config: dict[str, Any], clock: Clock | VirtualClock) -> None:
    """Emit the schedule: every `TICK_S` of wall time on the realtime clock; on the virtual
    clock once a heartbeat interval, on the grid of its multiples, the calls of the whole
    interval at once (each with its own time stamp), so an hour costs its handovers, not
    its calls."""
    site = config["site"]
    log = setup_logging(config["name"], site, clock)
    ledger = Ledger(Path(config["ledger"]))
    deliveries = DeliveryLog(Path(config["deliveries"]))
    heartbeat = float(config.get("heartbeat_interval", 60.0))
    virtual = clock if isinstance(clock, VirtualClock) else None
    wait = heartbeat if virtual is not None else ack_timeout(clock, heartbeat)  # type: ignore[arg-type]
    start = clock.now()
    vouch = deliveries.vouching(
        [icon["name"] for icon in config["icons"]], Ledger.read(ledger.path), start
    )
    # ICONs rebuilt without their disks (a site recovered on new ones) hold nothing of
    # before, whatever the delivery log says they took: they vouch from now on.
    for name in config.get("vouch_anew", []):
        vouch[name] = start
    links = [
        IconLink(
            icon["name"],
            icon["port"],
            wait,
            deliveries.record,
            icon.get("host", "127.0.0.1"),
            virtual,
            vouch[icon["name"]],
        )
        for icon in config["icons"]
    ]
    for link in links:
        link.start()
    events = schedule(
        site, float(config["rate_per_hour"]), int(config["seed"]), config.get("id_prefix")
    )
    upcoming = next(events)
    while upcoming.ts < start:  # not running then: those calls never happened
        upcoming = next(events)
    emitted = 0
    log.info("emitting %s events/h from t=%.0fs", config["rate_per_hour"], start)
    stopping = threading.Event()  # SIGTERM: finish delivering what is in the ledger, then go
    woken = virtual.gate() if virtual is not None else None

    def stop(*_: object) -> None:
        stopping.set()
        if woken is not None:
            woken.open()

    signal.signal(signal.SIGTERM, stop)
    # Longer than this between two passes, and the source was frozen (SIGSTOP) in between:
    # a source that is not running takes no calls, so those never happened (as for a
    # stopped one), and its schedule goes on from now.
    frozen_after = (
        heartbeat if virtual is not None else max(heartbeat, 2 * wait * clock.factor)  # type: ignore[union-attr]
    )
    last = start
    while not stopping.is_set():
        now = clock.now()
        if now - last > frozen_after:
            log.info("was frozen from about t=%.0fs: no calls until now", last)
            while upcoming.ts < now:
                upcoming = next(events)
        last = now
        batch = []
        while upcoming.ts <= now:
            batch.append(upcoming)
            upcoming = next(events)
        if batch:
            ledger.append(batch)
            emitted += len(batch)
        body = "".join(e.to_json() + "\n" for e in batch).encode()
        for link in links:
            link.offer(batch, now, body)
        write_status(
            config["status"],
            {
                "emitted": emitted,
                "scenario_time": now,
                "delivered_to": [n for n, ok in deliveries.last.items() if ok],
            },
        )
        if woken is not None:
            woken.wait(next_on_grid(now, heartbeat))
        else:
            stopping.wait(TICK_S)
    for link in links:
        link.finish()
    for link in links:
        link.join(timeout=10.0)
    log.info("stopped after emitting %d events", emitted)


def main() -> None:
    config = load_config()
    run_source(config, run_clock(config["name"], "source"))


if __name__ == "__main__":
    main()
