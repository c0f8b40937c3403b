"""A proxy: a listener, its upstream, its live connections and its toxics.

Every change here is synchronous bookkeeping plus non-blocking socket calls, so the HTTP
API that calls it never waits on data in flight (the reference's API can freeze when a
toxic is removed under load; ours cannot). Only binding a listener is awaited.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

from testbed.netfault.chain import (
    STREAMS,
    TOXIC_EXISTS,
    TOXIC_NOT_FOUND,
    ApiError,
    ToxicChain,
    ToxicEntry,
    bad_request,
    parse_attributes,
    parse_toxicity,
)
from testbed.netfault.link import Connection
from testbed.netfault.links import Links
from testbed.netfault.toxics import REGISTRY, Toxic


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str, links: Links | None = None) -> None:
        self.name = name
        self.links = links if links is not None else Links()  # shared with its server's proxies
        self.requested_listen = listen
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.chain = ToxicChain()
        self.connections: set[Connection] = set()
        self.accepted = 0
        self.counters = {s: {"received": 0, "sent": 0} for s in STREAMS}
        self._server: asyncio.base_events.Server | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.chain.all()],
        }

    def upstream_address(self) -> tuple[str, int]:
        return split_host_port(self.upstream)

    # --- listening -------------------------------------------------------------------

    async def start(self) -> None:
        if self.enabled:
            return
        host, port = split_host_port(self.listen)
        ip = resolve(host)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: Connection(self).client, ip, port, reuse_address=True, backlog=1024
            )
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = "address already in use"
            raise ApiError(f"listen tcp {format_address(ip, port)}: bind: {reason}", 500) from None
        bound = self._server.sockets[0].getsockname()
        self.listen = format_address(bound[0], bound[1])
        self.enabled = True

    def stop(self) -> None:
        """Stop listening (new clients are refused) and cut every live connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.enabled = False
        for conn in list(self.connections):
            conn.close(abort=True)

    async def update(self, body: dict[str, Any]) -> None:
        """Partial update: missing fields keep their values; a new address rebinds."""
        listen = body.get("listen", self.listen)
        upstream = body.get("upstream", self.upstream)
        enabled = body.get("enabled", self.enabled)
        if not isinstance(listen, str) or not isinstance(upstream, str):
            raise bad_request("listen and upstream must be strings")
        if not isinstance(enabled, bool):
            raise bad_request("enabled must be true or false")
        if listen != self.listen or upstream != self.upstream:
            split_host_port(listen)
            split_host_port(upstream)
            self.stop()
            if listen != self.listen:
                self.listen = self.requested_listen = listen
            self.upstream = upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled and self.enabled:
            self.stop()

    # --- toxics ----------------------------------------------------------------------

    def _changed(self, stream: str, removed: list[Toxic] | None = None) -> None:
        self.chain.version += 1
        for conn in list(self.connections):
            conn.chain_changed(stream, removed or [])

    def add_toxic(self, body: dict[str, Any]) -> ToxicEntry:
        entry = ToxicChain.build(body)
        if self.chain.find(entry.name) is not None:
            raise ApiError(*TOXIC_EXISTS)
        self.chain.stream(entry.stream).append(entry)
        self._changed(entry.stream)
        return entry

    def update_toxic(self, name: str, body: dict[str, Any]) -> ToxicEntry:
        entry = self.chain.find(name)
        if entry is None:
            raise ApiError(*TOXIC_NOT_FOUND)
        attributes = parse_attributes(entry.type, body.get("attributes"), entry.toxic.attributes)
        toxicity = parse_toxicity(body.get("toxicity", entry.toxicity))
        entry.toxic = REGISTRY[entry.type](name, attributes)
        entry.toxicity = toxicity
        self._changed(entry.stream)
        return entry

    def remove_toxic(self, name: str) -> None:
        entry = self.chain.find(name)
        if entry is None:
            raise ApiError(*TOXIC_NOT_FOUND)
        self.chain.stream(entry.stream).remove(entry)
        self._changed(entry.stream, [entry.toxic])

    def remove_all_toxics(self) -> None:
        for stream in STREAMS:
            removed = [t.toxic for t in self.chain.stream(stream)]
            self.chain.stream(stream).clear()
            self._changed(stream, removed)


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (every address) into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise bad_request(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def resolve(host: str) -> str:
    """The address to bind for a host name, IPv4 first (as `localhost` resolves in Go)."""
    if host in ("", "0.0.0.0"):
        return "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ApiError(f"listen tcp {host}: {exc.strerror}", 500) from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def format_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
