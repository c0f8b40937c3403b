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
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def of_kind(history: list[dict[str, Any]], *kinds: str) -> Iterator[dict[str, Any]]:
    return (entry for entry in history if entry["kind"] in kinds)
