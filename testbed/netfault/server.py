"""The WAN proxy server: `testbed proxy serve` / `python -m testbed.netfault`.

Flags follow the reference (`-host`, `-port`, `-config FILE`, single dash; double dash also
accepted). The config file is a JSON array of proxies, as for `POST /populate`, and may
declare toxics for each proxy (an extension).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from testbed.netfault import http
from testbed.netfault.api import VERSION, Api
from testbed.netfault.chain import ApiError
from testbed.netfault.state import ProxyCollection

log = logging.getLogger("testbed.netfault")

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8474


class ProxyServer:
    """The API and every proxy on one event loop."""

    def __init__(self) -> None:
        self.proxies = ProxyCollection()
        self.api = Api(self.proxies)
        self._http: list[asyncio.base_events.Server] = []

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        hosts = ["127.0.0.1"] if host == "localhost" else [host]  # clients dial 127.0.0.1
        for each in hosts:
            self._http.append(await http.start(self.api, each, port))
        return [s.sockets[0].getsockname()[:2] for s in self._http]

    async def populate_file(self, path: Path) -> int:
        try:
            items = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: cannot read proxy config {path}: {exc}") from None
        try:
            created, error = await self.proxies.populate(items)
        except ApiError as exc:
            raise SystemExit(f"error: proxy config {path}: {exc.message}") from None
        if error is not None:
            raise SystemExit(f"error: proxy config {path}: {error.message}")
        return len(created)

    async def close(self) -> None:
        for server in self._http:
            server.close()
        await self.proxies.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="testbed proxy serve", description="Toxiproxy-compatible TCP fault proxy."
    )
    parser.add_argument("-host", "--host", default=DEFAULT_HOST, help="API address (localhost)")
    parser.add_argument("-port", "--port", type=int, default=DEFAULT_PORT, help="API port (8474)")
    parser.add_argument("-config", "--config", type=Path, help="JSON file of proxies to create")
    parser.add_argument("-version", "--version", action="version", version=VERSION)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, ready: asyncio.Event | None = None) -> None:
    server = ProxyServer()
    try:
        bound = await server.start(args.host, args.port)
    except OSError as exc:
        raise SystemExit(
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}"
        ) from None
    if args.config:
        count = await server.populate_file(args.config)
        log.info("populated %d proxies from %s", count, args.config)
    print(f"proxy API listening on {', '.join(f'{h}:{p}' for h, p in bound)}", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(parse_args(argv)))
