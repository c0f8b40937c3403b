"""The control channel between the proxy server and its relay workers: messages that may
carry sockets, over a Unix socket pair, sent without ever blocking either side.

A message is a JSON header and raw bytes after it (some of the data a worker still owed a
peer, when it gives a connection back); the sockets it carries travel beside it
(SCM_RIGHTS). Messages arrive whole and in order (SOCK_SEQPACKET).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

MAX_PAYLOAD = 64 << 10  # the raw bytes of one message, at most (more goes in several)
MAX_MESSAGE = MAX_PAYLOAD + 4096


def pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("!I", len(head)) + head + payload


def unpack(message: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack_from("!I", message)
    return json.loads(message[4 : 4 + size]), message[4 + size :]


class Channel:
    """One end of a control socket: sends never block (queued until the socket takes them),
    and each message that arrives, with the sockets it carries, goes to `on_message`."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[dict[str, Any], bytes, list[socket.socket]], None],
        on_eof: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_eof = on_eof
        self._out: deque[tuple[bytes, list[socket.socket]]] = deque()
        self.closed = False
        self._loop.add_reader(sock, self._readable)

    def send(
        self, header: dict[str, Any], payload: bytes = b"", socks: Sequence[socket.socket] = ()
    ) -> None:
        """Queue a message; the sockets it carries belong to the other end once sent."""
        if self.closed:
            for sock in socks:
                sock.close()
            return
        self._out.append((pack(header, payload), list(socks)))
        if len(self._out) == 1:
            self._writable()

    def _writable(self) -> None:
        while self._out:
            message, socks = self._out[0]
            try:
                socket.send_fds(self.sock, [message], [s.fileno() for s in socks])
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self.sock, self._writable)
                return
            except OSError:
                self.close()
                return
            self._out.popleft()
            for sock in socks:
                sock.close()  # the other end holds its own copy now
        self._loop.remove_writer(self.sock)

    def _readable(self) -> None:
        for _ in range(64):  # then let the loop breathe
            try:
                message, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds, flags = b"", [], 0
            socks = [socket.socket(fileno=fd) for fd in fds]
            if not message or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                for sock in socks:
                    sock.close()
                self.close()
                return
            header, payload = unpack(message)
            self._on_message(header, payload, socks)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.sock)
        self._loop.remove_writer(self.sock)
        for _message, socks in self._out:
            for sock in socks:
                sock.close()
        self._out.clear()
        self.sock.close()
        self._on_eof()


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
