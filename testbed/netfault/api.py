"""The HTTP API of the reference: paths, methods, status codes, JSON shapes, error bodies.

Errors are `{"error": msg, "status": code}` plus a newline as `text/plain` (the reference
writes them with Go's `http.Error`); every response carries `X-Toxiproxy-Request-Id`;
browsers are turned away (403) so a web page cannot drive the proxy.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

from testbed.netfault import timebase
from testbed.netfault.chain import PROXY_NOT_FOUND, ApiError, bad_request
from testbed.netfault.http import Request, Response
from testbed.netfault.proxy import Proxy
from testbed.netfault.state import ProxyCollection

VERSION = "2.12.0"


def _json(status: int, value: Any) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(status, body, {"Content-Type": "application/json"})


def _error(status: int, message: str, extra: dict[str, Any] | None = None) -> Response:
    body = json.dumps({"error": message, "status": status, **(extra or {})}, separators=(",", ":"))
    return Response(
        status,
        (body + "\n").encode(),
        {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"},
    )


def _body(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(request.body or b"null")
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    if value is None:
        raise bad_request("EOF")
    if not isinstance(value, dict):
        raise bad_request("expected a JSON object")
    return value


class Api:
    """Routes requests to the proxy collection."""

    def __init__(self, proxies: ProxyCollection) -> None:
        self.proxies = proxies
        self.routes: list[tuple[re.Pattern[str], dict[str, Any]]] = [
            (re.compile(r"^/reset$"), {"POST": self.reset}),
            (re.compile(r"^/proxies$"), {"GET": self.proxy_index, "POST": self.proxy_create}),
            (re.compile(r"^/populate$"), {"POST": self.populate}),
            (
                re.compile(r"^/proxies/(?P<proxy>[^/]+)$"),
                {
                    "GET": self.proxy_show,
                    "POST": self.proxy_update,
                    "PATCH": self.proxy_update,
                    "DELETE": self.proxy_delete,
                },
            ),
            (
                re.compile(r"^/proxies/(?P<proxy>[^/]+)/toxics$"),
                {"GET": self.toxic_index, "POST": self.toxic_create},
            ),
            (
                re.compile(r"^/proxies/(?P<proxy>[^/]+)/toxics/(?P<toxic>[^/]+)$"),
                {
                    "GET": self.toxic_show,
                    "POST": self.toxic_update,
                    "PATCH": self.toxic_update,
                    "DELETE": self.toxic_delete,
                },
            ),
            (re.compile(r"^/version$"), {"GET": self.version}),
            (re.compile(r"^/testbed/clock$"), {"GET": self.clock_show, "POST": self.clock_set}),
            (re.compile(r"^/metrics$"), {"*": self.metrics}),
        ]

    async def __call__(self, request: Request) -> Response:
        response = await self._dispatch(request)
        response.headers["X-Toxiproxy-Request-Id"] = secrets.token_hex(10)
        return response

    async def _dispatch(self, request: Request) -> Response:
        if request.headers.get("user-agent", "").startswith("Mozilla/"):
            return Response(
                403, b"User agent not allowed\n", {"Content-Type": "text/plain; charset=utf-8"}
            )
        path = urlsplit(request.path).path
        for pattern, methods in self.routes:
            match = pattern.match(path)
            if not match:
                continue
            handler = methods.get(request.method) or methods.get("*")
            if handler is None:
                return Response(405)
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return await handler(request, **params)
            except ApiError as exc:
                return _error(exc.status, exc.message)
        return Response(404, b"404 page not found\n", {"Content-Type": "text/plain; charset=utf-8"})

    # --- proxies -----------------------------------------------------------------------

    async def proxy_index(self, request: Request) -> Response:
        return _json(200, {name: p.to_json() for name, p in self.proxies.items()})

    async def proxy_create(self, request: Request) -> Response:
        proxy = await self.proxies.create(_body(request))
        return _json(201, proxy.to_json())

    async def populate(self, request: Request) -> Response:
        try:
            items = json.loads(request.body or b"null")
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        created, error = await self.proxies.populate(items)
        proxies = [p.to_json() for p in created]
        if error is not None:
            return _json(
                error.status, {"error": error.message, "status": error.status, "proxies": proxies}
            )
        return _json(201, {"proxies": proxies})

    def _proxy(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError(*PROXY_NOT_FOUND)
        return proxy

    async def proxy_show(self, request: Request, proxy: str) -> Response:
        return _json(200, self._proxy(proxy).to_json())

    async def proxy_update(self, request: Request, proxy: str) -> Response:
        found = self._proxy(proxy)
        await found.update(_body(request))
        return _json(200, found.to_json())

    async def proxy_delete(self, request: Request, proxy: str) -> Response:
        self.proxies.remove(self._proxy(proxy).name)
        return Response(204)

    async def reset(self, request: Request) -> Response:
        await self.proxies.reset()
        return Response(204)

    # --- toxics ------------------------------------------------------------------------

    async def toxic_index(self, request: Request, proxy: str) -> Response:
        return _json(200, [t.to_json() for t in self._proxy(proxy).chain.all()])

    async def toxic_create(self, request: Request, proxy: str) -> Response:
        found = self._proxy(proxy)
        return _json(200, found.add_toxic(_body(request)).to_json())

    async def toxic_show(self, request: Request, proxy: str, toxic: str) -> Response:
        entry = self._proxy(proxy).chain.find(toxic)
        if entry is None:
            raise ApiError("toxic not found", 404)
        return _json(200, entry.to_json())

    async def toxic_update(self, request: Request, proxy: str, toxic: str) -> Response:
        found = self._proxy(proxy)
        return _json(200, found.update_toxic(toxic, _body(request)).to_json())

    async def toxic_delete(self, request: Request, proxy: str, toxic: str) -> Response:
        self._proxy(proxy).remove_toxic(toxic)
        return Response(204)

    # --- the time the toxics run on (an extension) ---------------------------------------

    async def clock_show(self, request: Request) -> Response:
        return _json(200, {"clock": "virtual" if timebase.current().virtual else "wall"})

    async def clock_set(self, request: Request) -> Response:
        """`{"clock": PATH, "seed": N}` attaches the toxics to the virtual clock whose
        socket is at PATH, their random draws seeded by N; `{"clock": null}` goes back to
        wall time. Attaching is refused while a toxic exists: what it holds was timed on the
        wall clock."""
        body = _body(request)
        path, seed = body.get("clock"), body.get("seed", 0)
        if path is None:
            timebase.detach()
            return await self.clock_show(request)
        if not isinstance(path, str) or not path:
            raise bad_request("clock must be the path of a virtual clock's socket, or null")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad_request("seed must be an integer")
        if any(p.chain.all() for _name, p in self.proxies.items()):
            raise ApiError("remove every toxic before attaching a clock", 409)
        self.proxies.links.idle()
        try:
            timebase.attach(path, self.proxies, seed)
        except OSError as exc:
            raise ApiError(str(exc), 400) from None
        return await self.clock_show(request)

    # --- the rest ----------------------------------------------------------------------

    async def version(self, request: Request) -> Response:
        body = f'{{"version": "{VERSION}"}}\n'.encode()
        return Response(200, body, {"Content-Type": "application/json;charset=utf-8"})

    async def metrics(self, request: Request) -> Response:
        return Response(
            200,
            self.proxies.metrics_text().encode(),
            {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )
