"""What every pipeline process (data source, ICON, GIM) shares: its config file, its status
file, its log lines, and how it connects to a database across a WAN that may hang.

Each process is started with one argument, a JSON config file, and the run's clock in the
environment; it reports by rewriting a small JSON status file that the run control reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import waiting
from psycopg.conninfo import make_conninfo

from testbed.clock import ENV, Clock
from testbed.periods import (
    CONNECT_TIMEOUT_S,
    IO_DEADLINE_S,
    STATEMENT_TIMEOUT_S,
    VIRTUAL_CONNECT_BACKSTOP_WALL_S,
)
from testbed.postgres import SUPERUSER, deadline, shut_down, split_address
from testbed.vclock.participant import VirtualClock
from testbed.vclock.wire import ENV_PREFIX

RunClock = Clock | VirtualClock  # what a component reads the time from


def run_clock(name: str, role: str) -> Clock | VirtualClock:
    """The run's clock, as the environment names it: realtime, or the run's virtual one."""
    raw = os.environ.get(ENV, "")
    if raw.startswith(ENV_PREFIX):
        return VirtualClock(raw.removeprefix(ENV_PREFIX), name, role)
    return Clock.from_env()


def load_config() -> dict[str, Any]:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m {sys.argv[0]} CONFIG.json")
    return json.loads(Path(sys.argv[1]).read_text())


def write_status(path: str | Path, status: dict[str, Any]) -> None:
    """Atomically replace the status file, so a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_suffix(f".tmp{threading.get_ident()}")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def read_status(path: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class _ScenarioTime(logging.Filter):
    def __init__(self, clock: RunClock) -> None:
        super().__init__()
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        record.scenario = self.clock.now()
        return True


def setup_logging(component: str, site: str, clock: RunClock) -> logging.Logger:
    """Log lines carry the site, the component and the scenario time."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ScenarioTime(clock))
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s t=%(scenario).0fs {site} {component} %(levelname)s %(message)s"
        )
    )
    logger = logging.getLogger(f"testbed.{component}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def exit_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def connect(
    address: str,
    dbname: str,
    application_name: str,
    clock: RunClock | None = None,
    target: str = "",
    route: str | None = None,
    via: str | None = None,
) -> psycopg.Connection:
    """A connection that notices a dead peer. On the realtime clock: connect timeout,
    keepalives, and a server-side statement timeout (pair it with `call` for black holes).
    On the virtual clock a call has a deadline in scenario time instead (`IO_DEADLINE_S`),
    which the clock enforces, and wall timeouts only as a backstop far beyond it: a healthy
    server on a busy machine is slow, not gone."""
    host, port = split_address(address)
    params: dict[str, Any] = {
        "host": host,
        "port": port,
        "user": SUPERUSER,
        "dbname": dbname,
        "application_name": application_name,
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": 2,
    }
    if not isinstance(clock, VirtualClock):
        return psycopg.connect(
            **params,
            connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={int(STATEMENT_TIMEOUT_S * 1000)}",
        )
    return _connect_on_time(
        clock,
        make_conninfo("", **params, connect_timeout=VIRTUAL_CONNECT_BACKSTOP_WALL_S),
        target or address,
        route,
        via,
    )


def _connect_on_time(
    clock: VirtualClock, conninfo: str, target: str, route: str | None, via: str | None
) -> psycopg.Connection:
    """psycopg's connection generator driven by a wait of our own, which the clock can
    cut short at the deadline (libpq's own connect waits only on wall time)."""
    cancel_r, cancel_w = os.pipe()
    gen = psycopg.Connection._connect_gen(conninfo)
    try:
        with (
            clock.io(target, route, clock.now() + IO_DEADLINE_S, lambda: _poke(cancel_w), via),
            selectors.DefaultSelector() as selector,
        ):
            fileno, wait = next(gen)
            while True:
                events = (selectors.EVENT_READ if wait & waiting.Wait.R else 0) | (
                    selectors.EVENT_WRITE if wait & waiting.Wait.W else 0
                )
                selector.register(fileno, events)
                selector.register(cancel_r, selectors.EVENT_READ)
                ready = selector.select()
                selector.unregister(fileno)
                selector.unregister(cancel_r)
                if any(key.fd == cancel_r for key, _ in ready):
                    _abort_on_close(fileno)
                    raise psycopg.errors.ConnectionTimeout(
                        f"no answer from {target} within {IO_DEADLINE_S:g}s of scenario time"
                    )
                mask = 0
                for _, got in ready:
                    mask |= got
                fileno, wait = gen.send(
                    waiting.Ready(
                        (waiting.Ready.R if mask & selectors.EVENT_READ else 0)
                        | (waiting.Ready.W if mask & selectors.EVENT_WRITE else 0)
                    )
                )
    except StopIteration as done:
        return done.value
    finally:
        gen.close()
        os.close(cancel_r)
        os.close(cancel_w)


def _abort_on_close(fileno: int) -> None:
    """Make closing this half-open connection a reset. Across a black hole the WAN proxy
    has dialled the server already (as Toxiproxy does), and a server backend would wait
    for the startup packet until its wall-clock authentication timeout: a virtual clock
    retrying every heartbeat would fill the server's connection slots within seconds. A
    reset ends the proxy's connection, and so the backend, where a plain close would be
    swallowed by the hole like any byte. Only a connect is ended so: no transaction can be
    open on it."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fileno)) as dup:
        dup.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _poke(fd: int) -> None:
    os.write(fd, b"x")


@contextlib.contextmanager
def call(
    clock: RunClock,
    conn: psycopg.Connection,
    target: str,
    route: str | None,
    via: str | None = None,
) -> Iterator[None]:
    """Calls on `conn` with a deadline: on the realtime clock a wall timer shuts the
    socket down (`postgres.deadline`); on the virtual clock the deadline is scenario time,
    and only a call the faults block, or whose bytes the WAN proxy `via` holds, waits for
    the time to move."""
    if isinstance(clock, VirtualClock):
        due = clock.now() + IO_DEADLINE_S
        with clock.io(target, route, due, lambda: shut_down(conn), via):
            yield
    else:
        with deadline(conn, STATEMENT_TIMEOUT_S + 0.5):
            yield


def scalar(conn: psycopg.Connection, query: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the one row an aggregate or a keyed query returns."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise psycopg.DataError(f"no row from: {query}")
    return row[0]
