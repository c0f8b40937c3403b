"""The coordinator's wire: one JSON object per line over a Unix stream socket.

A Unix socket because its writes are in the reader's queue when `send` returns: a
participant that told the coordinator "busy" before handing bytes to another process is
read as busy before that process's "idle" can be, so a handoff is never taken for
quiescence. Containers on one host reach it through a bind-mounted folder.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

ENV_PREFIX = "virtual:"


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


class Reader:
    """Whole lines from a socket, however the bytes arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def feed(self) -> list[dict[str, Any]] | None:
        """Read what is there (one `recv`); the messages now complete, or None at EOF."""
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def next(self) -> dict[str, Any] | None:
        """Block until one whole message has arrived (None at EOF)."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def now_path(socket_path: Path | str) -> Path:
    """The shared file holding the time (a double), beside the coordinator's socket."""
    return Path(socket_path).with_name("now")
