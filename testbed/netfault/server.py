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
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from testbed.netfault import http, loop, relayloop, workers
from testbed.netfault.api import VERSION, Api
from testbed.netfault.chain import ApiError
from testbed.netfault.state import ProxyCollection
from testbed.netfault.toxics.base import Toxic

log = logging.getLogger("testbed.netfault")

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8474


class ProxyServer:
    """The API and every proxy on one event loop (plain relaying may be lent to workers)."""

    def __init__(self, forked: list[workers.Preforked] | None = None) -> None:
        self.proxies = ProxyCollection()
        self.api = Api(self.proxies)
        self.pool = workers.WorkerPool(forked) if forked else None
        self._http: list[asyncio.base_events.Server] = []

    async def start(self, host: str, port: int, token: str | None = None) -> list[tuple[str, int]]:
        if self.pool is not None:  # ready before the API answers, to take the first clients
            await self.pool.start()
            workers.install(self.pool)
        hosts = ["127.0.0.1"] if host == "localhost" else [host]  # clients dial 127.0.0.1
        try:
            for each in hosts:
                self._http.append(await http.start(self.handle, each, port, token))
        except OSError:
            await self.close()
            raise
        return [s.sockets[0].getsockname()[:2] for s in self._http]

    async def handle(self, request: http.Request) -> http.Response:
        """The API, with the workers in step: counters fetched before they are shown, and
        connections a change recalls from them back before the change is confirmed."""
        metrics = urlsplit(request.path).path == "/metrics"
        if self.pool is not None and metrics:
            await self.pool.sync_counters()
        response = await self.api(request)
        if self.pool is not None:
            await self.pool.settled()
            if metrics and response.status == 200:
                response.body += self.pool.metrics_text().encode()
        return response

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
        if self.pool is not None:
            workers.install(None)
            await self.pool.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="testbed proxy serve", description="Toxiproxy-compatible TCP fault proxy."
    )
    parser.add_argument("-host", "--host", default=DEFAULT_HOST, help="API address (localhost)")
    parser.add_argument("-port", "--port", type=int, default=DEFAULT_PORT, help="API port (8474)")
    parser.add_argument("-config", "--config", type=Path, help="JSON file of proxies to create")
    parser.add_argument(
        "-workers",
        "--workers",
        type=int,
        default=None,
        help=f"relay processes for proxies without toxics (0: none; default: "
        f"${workers.WORKERS_ENV}, else one per core, at most 2)",
    )
    parser.add_argument(
        "-reference",
        "--reference",
        action="store_true",
        help="behave as the reference server: our extensions (a bandwidth toxic's group) are "
        "dropped as unknown attributes, to test a client's fallback against it",
    )
    parser.add_argument("-version", "--version", action="version", version=VERSION)
    return parser.parse_args(argv)


def worker_count(args: argparse.Namespace) -> int:
    return workers.default_count() if args.workers is None else max(0, args.workers)


async def serve(
    args: argparse.Namespace,
    ready: asyncio.Event | None = None,
    forked: list[workers.Preforked] | None = None,
    relay_name: str = "Python",
) -> None:
    """The server until SIGINT or SIGTERM, with the relay workers `main` forked."""
    Toxic.extensions = not args.reference
    relay_workers = len(forked or ())
    server = ProxyServer(forked)
    token = os.environ.get(http.TOKEN_ENV) or None
    try:
        bound = await server.start(args.host, args.port, token)
    except OSError as exc:
        raise SystemExit(
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}"
        ) from None
    if args.config:
        count = await server.populate_file(args.config)
        log.info("populated %d proxies from %s", count, args.config)
    running = asyncio.get_running_loop()
    listening = ", ".join(f"{h}:{p}" for h, p in bound)
    relays = (
        f"{relay_workers} relay workers in {relay_name}" if relay_workers else "no relay workers"
    )
    guard = (
        "callers beyond loopback need the bearer token"
        if token
        else "open to every caller that can reach it"
    )
    print(
        f"proxy API listening on {listening} ({loop.loop_name(running)}, {relays}); {guard}",
        file=sys.stderr,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            running.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    native = relayloop.native()
    forked = workers.prefork(worker_count(args), native)
    loop.run(serve(args, forked=forked, relay_name=relayloop.name(native)))
