"""A small HTTP/1.1 server on asyncio streams, enough for every Toxiproxy client.

Keep-alive, Content-Length and chunked request bodies; responses always carry a
Content-Length. The standard library's `http.server` is thread-based and would put the
API on another thread than the data path it changes; this keeps both on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    headers[":version"] = version
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            raise BadRequest("body too large")
        body = await reader.readexactly(length) if length else b""
    return Request(method.upper(), target, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()).strip():  # trailers
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readline()
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest("body too large")


def _encode(response: Response, keep_alive: bool) -> bytes:
    reason = (
        HTTPStatus(response.status).phrase
        if response.status in HTTPStatus._value2member_map_
        else ""
    )
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    headers = dict(response.headers)
    if response.status not in (204, 304):
        headers["Content-Length"] = str(len(response.body))
    headers["Connection"] = "keep-alive" if keep_alive else "close"
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (response.body if response.status not in (204, 304) else b"")


TOKEN_ENV = "TESTBED_PROXY_TOKEN"


def from_loopback(peer: object) -> bool:
    """Whether a connection's peer address is this machine's loopback (IPv4-mapped too)."""
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def refusal(request: Request, peer: object, token: str | None) -> Response | None:
    """The API is not an open relay: with a token, a caller from anywhere but loopback must
    present it (`Authorization: Bearer TOKEN`); loopback keeps Toxiproxy's open surface."""
    if token is None or from_loopback(peer):
        return None
    given = request.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return None
    body = json.dumps({"error": "this API needs the run's bearer token", "status": 401})
    return Response(401, body.encode(), {"Content-Type": "application/json"})


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    token: str | None = None,
) -> None:
    peer = writer.get_extra_info("peername")
    try:
        while True:
            try:
                request = await _read_request(reader)
            except (BadRequest, ValueError) as exc:
                writer.write(_encode(Response(400, f"{exc}\n".encode()), keep_alive=False))
                await writer.drain()
                return
            if request is None:
                return
            response = refusal(request, peer, token) or await handler(request)
            keep_alive = request.headers.get("connection", "").lower() != "close" and (
                request.headers[":version"] != "HTTP/1.0"
                or request.headers.get("connection", "").lower() == "keep-alive"
            )
            writer.write(_encode(response, keep_alive))
            await writer.drain()
            if not keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def start(
    handler: Handler, host: str, port: int, token: str | None = None
) -> asyncio.base_events.Server:
    return await asyncio.start_server(
        lambda r, w: serve_connection(r, w, handler, token),
        host,
        port,
        limit=MAX_HEADER_BYTES,
        reuse_address=True,
    )
