"""What every pipeline process (data source, ICON, GIM) shares: its config file, its status
file, its log lines, and how it connects to a database across a WAN that may hang.

Each process is started with one argument, a JSON config file, and the run's clock in the
environment; it reports by rewriting a small JSON status file that the run control reads.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from testbed.clock import Clock
from testbed.periods import CONNECT_TIMEOUT_S, STATEMENT_TIMEOUT_S
from testbed.postgres import SUPERUSER, split_address


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
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        record.scenario = self.clock.now()
        return True


def setup_logging(component: str, site: str, clock: Clock) -> logging.Logger:
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


def connect(address: str, dbname: str, application_name: str) -> psycopg.Connection:
    """A connection that notices a dead peer: connect timeout, keepalives, and a server-side
    statement timeout (pair it with `postgres.deadline` for black holes)."""
    host, port = split_address(address)
    return psycopg.connect(
        host=host,
        port=port,
        user=SUPERUSER,
        dbname=dbname,
        application_name=application_name,
        connect_timeout=CONNECT_TIMEOUT_S,
        keepalives=1,
        keepalives_idle=1,
        keepalives_interval=1,
        keepalives_count=2,
        options=f"-c statement_timeout={int(STATEMENT_TIMEOUT_S * 1000)}",
    )


def scalar(conn: psycopg.Connection, query: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the one row an aggregate or a keyed query returns."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise psycopg.DataError(f"no row from: {query}")
    return row[0]
