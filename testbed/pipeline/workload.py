"""The data sources and the ground truth.

One data source per site emits that site's interactions: Poisson arrivals at `rate` per
scenario hour, deterministic from the seed (the same seed gives the same ids, times and
payloads). Every emitted event is first appended to the site's ledger (JSON lines, fsync'd
per batch), then pushed to both ICONs of the site's pair. An ICON that does not take a
batch misses it (the real data source caches only briefly); its partner covers it. The
ledger, and only the ledger, is what the checkers call the truth.

A data source that is not running emits nothing: calls that were not taken never happened,
so a restarted source goes on from the schedule's next event after the current time.

Run as `python -m testbed.pipeline.workload CONFIG.json`, with the run's clock in the environment.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testbed.clock import Clock
from testbed.periods import ack_timeout
from testbed.pipeline.component import load_config, setup_logging, write_status

TICK_S = 0.01  # wall seconds between batches


@dataclass(frozen=True)
class Event:
    id: str
    site: str
    ts: float  # scenario seconds
    payload: str


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
        self._file.write("".join(json.dumps(asdict(e)) + "\n" for e in events))
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


class IconLink(threading.Thread):
    """The source's connection to one ICON, on a thread of its own, so that a frozen or slow
    ICON holds up its own deliveries only, never its partner's.

    Batches go out in order, one awaiting its acknowledgement at a time. One that does not
    come within `ack_timeout` (a heartbeat interval scaled to the clock, see
    `periods.ack_timeout`) marks the ICON unreachable: the connection is dropped, and every
    batch that waits until the ICON answers again is a miss (the real data source caches
    only briefly); the partner covers it. Outcomes go to the deliveries log, one line per
    batch and ICON."""

    def __init__(
        self,
        name: str,
        port: int,
        ack_timeout: float,
        record: Callable[[list[Event], str, bool], None],
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(daemon=True, name=f"link-{name}")
        self.name = name
        self.host = host  # the ICON's container name when the pipeline runs in containers
        self.port = port
        self.ack_timeout = ack_timeout
        self.record = record
        self.sock: socket.socket | None = None
        self.reader: Any = None
        self.pending: collections.deque[tuple[list[Event], bytes]] = collections.deque()
        self.ready = threading.Condition()
        self.closing = False

    def offer(self, batch: list[Event], payload: bytes) -> None:
        with self.ready:
            self.pending.append((batch, payload))
            self.ready.notify()

    def finish(self) -> None:
        """Deliver what is pending, then end (the source is stopping)."""
        with self.ready:
            self.closing = True
            self.ready.notify()

    def run(self) -> None:
        healthy = True  # an ICON that failed gets data again only after it answers a probe
        while True:
            with self.ready:
                while not self.pending and not self.closing:
                    self.ready.wait()
                if not self.pending:
                    break
                waiting = list(self.pending) if not healthy else [self.pending[0]]
                for _ in waiting:
                    self.pending.popleft()
            if healthy:
                batch, payload = waiting[0]
                delivered = self.send(payload) and self.acked(len(batch))
                healthy = delivered
                if batch:
                    self.record(batch, self.name, delivered)
                continue
            # Unreachable or frozen: what waited is missed. A probe (the newest batch's
            # watermark, no events) tells whether it answers again; a frozen ICON finds no
            # events in its socket when it wakes, as a down ICON would have taken none.
            for batch, _ in waiting:
                if batch:
                    self.record(batch, self.name, False)
            header = waiting[-1][1].split(b"\n", 1)[0].rsplit(b" ", 1)[0]
            healthy = self.send(header + b" 0\n") and self.acked(0)
        self.close()

    def send(self, payload: bytes) -> bool:
        try:
            if self.sock is None:
                self.sock = socket.create_connection((self.host, self.port), timeout=0.2)
                self.sock.settimeout(self.ack_timeout)
                self.reader = self.sock.makefile("rb")
            self.sock.sendall(payload)
            return True
        except OSError:
            self.close()
            return False

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
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the source
        self._lock = threading.Lock()
        self.last: dict[str, bool] = {}

    def record(self, batch: list[Event], icon: str, delivered: bool) -> None:
        line = {"first": batch[0].id, "last": batch[-1].id, "count": len(batch)}
        with self._lock:
            self.last[icon] = delivered
            self._file.write(json.dumps({**line, "delivered": {icon: delivered}}) + "\n")
            self._file.flush()


def run_source(config: dict[str, Any], clock: Clock) -> None:
    site = config["site"]
    log = setup_logging(config["name"], site, clock)
    ledger = Ledger(Path(config["ledger"]))
    deliveries = DeliveryLog(Path(config["deliveries"]))
    wait = ack_timeout(clock, float(config.get("heartbeat_interval", 60.0)))
    links = [
        IconLink(icon["name"], icon["port"], wait, deliveries.record, icon.get("host", "127.0.0.1"))
        for icon in config["icons"]
    ]
    for link in links:
        link.start()
    events = schedule(
        site, float(config["rate_per_hour"]), int(config["seed"]), config.get("id_prefix")
    )
    start = clock.now()
    upcoming = next(events)
    while upcoming.ts < start:  # not running then: those calls never happened
        upcoming = next(events)
    emitted = 0
    log.info("emitting %s events/h from t=%.0fs", config["rate_per_hour"], start)
    stopping = threading.Event()  # SIGTERM: finish delivering what is in the ledger, then go
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    while not stopping.is_set():
        now = clock.now()
        batch = []
        while upcoming.ts <= now:
            batch.append(upcoming)
            upcoming = next(events)
        if batch:
            ledger.append(batch)
            emitted += len(batch)
        payload = (
            f"B {now!r} {len(batch)}\n".encode()
            + "".join(json.dumps(asdict(e)) + "\n" for e in batch).encode()
        )
        for link in links:
            link.offer(batch, payload)
        write_status(
            config["status"],
            {
                "emitted": emitted,
                "scenario_time": now,
                "delivered_to": [n for n, ok in deliveries.last.items() if ok],
            },
        )
        stopping.wait(TICK_S)
    for link in links:
        link.finish()
    for link in links:
        link.join(timeout=10.0)
    log.info("stopped after emitting %d events", emitted)


def main() -> None:
    run_source(load_config(), Clock.from_env())


if __name__ == "__main__":
    main()
