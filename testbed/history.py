"""The history of a scenario run: plain data, one JSON object per line, appended as it
happens (steps, faults, process and server starts and stops, periodic samples of the
pipeline's figures), with wall and scenario time. Checkers read nothing else of the run
but this, the ledgers and the final database contents.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testbed.clock import Clock


class History:
    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        entry = {"wall": time.time(), "t": self.clock.now(), "kind": kind, **fields}
        with self._lock:
            self._file.write(json.dumps(entry, default=str) + "\n")
            self._file.flush()
        return entry

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_history(path: Path) -> list[dict[str, Any]]:
    return read_json_lines(path)


def read_json_lines(path: Path) -> list[Any]:
    """Every line of a JSON-lines file (a history, a ledger). Parsed as one array: a run's
    ledger is tens of thousands of lines, and a parser call per line was most of the cost
    of judging it. A line that does not parse is then named by the line-by-line pass."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        return list(json.loads("[" + ",".join(lines) + "]"))
    except ValueError:
        return [json.loads(line) for line in lines]


def of_kind(history: list[dict[str, Any]], *kinds: str) -> Iterator[dict[str, Any]]:
    return (entry for entry in history if entry["kind"] in kinds)
