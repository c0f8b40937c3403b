"""A relay worker's side of a loan, driven over its real control channel with real sockets:
a connection whose C loop cannot have a thread (the worker is out of descriptors or
threads) is relayed in Python instead, and still comes back whole when recalled."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
from typing import Any

import pytest

from testbed.netfault.channel import Channel
from testbed.netfault.relay import WorkerLoop

C_LOOP_BUILT = importlib.util.find_spec("testbed.netfault._relayloop") is not None

Message = tuple[dict[str, Any], bytes, list[socket.socket]]


async def _next(queue: asyncio.Queue[Message], op: str) -> Message:
    while True:
        message = await asyncio.wait_for(queue.get(), 5)
        if message[0]["op"] == op:
            return message


async def _recv(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        data += await asyncio.wait_for(loop.sock_recv(sock, size - len(data)), 5)
    return data


async def _lend_send_recall(native: Any) -> tuple[bytes, bytes, dict[str, Any], int]:
    """Lend a connection, pass bytes both ways, recall it: what each peer got, the answer,
    and the worker's thread count while it relayed."""
    server_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = WorkerLoop(worker_end, native)
    running = asyncio.create_task(worker.run())
    queue: asyncio.Queue[Message] = asyncio.Queue()
    channel = Channel(server_end, lambda h, p, s: queue.put_nowait((h, p, s)), lambda: None)
    await _next(queue, "ready")
    client, client_side = socket.socketpair()
    upstream, upstream_side = socket.socketpair()
    for sock in (client, upstream):
        sock.setblocking(False)
    channel.send({"op": "lend", "id": 1}, socks=[client_side, upstream_side])
    await asyncio.sleep(0.05)
    threads = threading.active_count()
    client.sendall(b"query")
    to_upstream = await _recv(upstream, 5)
    upstream.sendall(b"answer")
    to_client = await _recv(client, 6)
    channel.send({"op": "recall", "id": 1})
    header, _payload, socks = await _next(queue, "returned")
    for sock in (*socks, client, upstream):
        sock.close()
    channel.close()
    await asyncio.wait_for(running, 5)
    return to_upstream, to_client, header, threads


@pytest.mark.skipif(not C_LOOP_BUILT, reason="the C relay loop is not built here")
def test_a_connection_without_a_thread_for_the_c_loop_is_relayed_in_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from testbed.netfault import _relayloop

    before = threading.active_count()

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    up, down, header, threads = asyncio.run(_lend_send_recall(_relayloop))
    assert (up, down) == (b"query", b"answer")
    assert header["counts"] == [5, 6]
    assert threads == before  # relayed on the worker's loop, as without the C loop


@pytest.mark.skipif(not C_LOOP_BUILT, reason="the C relay loop is not built here")
def test_the_c_loop_relays_on_a_thread_and_gives_the_connection_back() -> None:
    from testbed.netfault import _relayloop

    before = threading.active_count()
    up, down, header, threads = asyncio.run(_lend_send_recall(_relayloop))
    assert (up, down) == (b"query", b"answer")
    assert header["counts"] == [5, 6]
    assert threads == before + 1
