"""A client for the Toxiproxy HTTP API: drives our proxy server or a real Toxiproxy alike.

The testbed changes the WAN only through this API, so `TESTBED_TOXIPROXY_URL` can point it
at any compatible server. An API error becomes a `ToxiproxyError` carrying the server's own
message and status; an unreachable server is a `ProxyUnavailable` that says where it looked.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from testbed.errors import TestbedError
from testbed.netfault.http import TOKEN_ENV

DEFAULT_URL = "http://127.0.0.1:8474"


class ToxiproxyError(TestbedError):
    """The API refused a request; `status` and `message` are the server's."""

    exit_code = 1

    def __init__(self, status: int, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {message} (HTTP {status})")
        self.status = status
        self.message = message


class ProxyUnavailable(TestbedError):
    exit_code = 1


@dataclass
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Toxic:
        return cls(
            data["name"],
            data["type"],
            data["stream"],
            float(data["toxicity"]),
            dict(data.get("attributes") or {}),
        )


@dataclass
class Proxy:
    """A proxy as the server last reported it, with the verbs that change it."""

    client: ToxiproxyClient = field(repr=False)
    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: list[Toxic]

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def _path(self, *more: str) -> str:
        return "/".join(["/proxies", quote(self.name, safe=""), *(quote(m, safe="") for m in more)])

    def _refresh_from(self, data: dict[str, Any]) -> Proxy:
        self.listen, self.upstream = data["listen"], data["upstream"]
        self.enabled = data["enabled"]
        self.toxics = [Toxic.from_json(t) for t in data.get("toxics") or []]
        return self

    def refresh(self) -> Proxy:
        return self._refresh_from(self.client.request("GET", self._path()))

    def update(self, **fields: Any) -> Proxy:
        """Partial update: `listen`, `upstream`, `enabled`."""
        return self._refresh_from(self.client.request("POST", self._path(), fields))

    def disable(self) -> Proxy:
        return self.update(enabled=False)

    def enable(self) -> Proxy:
        return self.update(enabled=True)

    def delete(self) -> None:
        self.client.request("DELETE", self._path())

    def add_toxic(
        self,
        type: str,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: Any,
    ) -> Toxic:
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        if name:
            body["name"] = name
        toxic = Toxic.from_json(self.client.request("POST", self._path("toxics"), body))
        self.toxics.append(toxic)
        return toxic

    def update_toxic(self, name: str, toxicity: float | None = None, **attributes: Any) -> Toxic:
        body: dict[str, Any] = {"attributes": attributes}
        if toxicity is not None:
            body["toxicity"] = toxicity
        return Toxic.from_json(self.client.request("POST", self._path("toxics", name), body))

    def remove_toxic(self, name: str) -> None:
        self.client.request("DELETE", self._path("toxics", name))
        self.toxics = [t for t in self.toxics if t.name != name]

    def list_toxics(self) -> list[Toxic]:
        return [Toxic.from_json(t) for t in self.client.request("GET", self._path("toxics"))]


class ToxiproxyClient:
    def __init__(
        self, url: str | None = None, timeout: float = 10.0, token: str | None = None
    ) -> None:
        self.url = (url or os.environ.get("TESTBED_TOXIPROXY_URL") or DEFAULT_URL).rstrip("/")
        # A proxy reached beyond loopback (a swarm's) wants its run's bearer token.
        self.token = token or os.environ.get(TOKEN_ENV) or None
        parts = urlsplit(self.url if "//" in self.url else f"http://{self.url}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 8474
        self.timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the kept connections (a later call opens new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"ToxiproxyClient({self.url})"

    def request(self, method: str, path: str, body: Any = None, text: bool = False) -> Any:
        """One API call; the decoded JSON answer (None for 204), or the body as text.

        Calls reuse kept-alive connections, one per caller at a time, so a fault on many
        proxies can be applied by several threads at once: the link stays cut until its
        last proxy is healed, and on a busy machine a dozen calls in a row, each on a new
        connection, made a heal minutes of scenario time late. A kept connection the server
        has closed meanwhile fails before the request reaches it, and is replaced once."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "User-Agent": "bc-testbed"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (1, 2):
            with self._lock:
                conn = self._idle.pop() if self._idle and attempt == 1 else None
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if reused:  # the server closed its kept connections: they are all stale
                    self.close()
                    continue
                raise ProxyUnavailable(
                    f"the Toxiproxy API at {self.url} closed the connection;"
                    " is the proxy server running?"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ProxyUnavailable(
                    f"no Toxiproxy API at {self.url} ({exc}); is the proxy server running?"
                ) from None
            if response.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)
            break
        if response.status >= 400:
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or response.reason
            raise ToxiproxyError(response.status, message, method, path)
        if text:
            return raw.decode(errors="replace")
        if response.status == 204 or not raw:
            return None
        return json.loads(raw)

    def _proxy(self, data: dict[str, Any]) -> Proxy:
        return Proxy(
            self,
            data["name"],
            data["listen"],
            data["upstream"],
            data["enabled"],
            [Toxic.from_json(t) for t in data.get("toxics") or []],
        )

    def version(self) -> str:
        return self.request("GET", "/version")["version"]

    def wait_until_ready(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.version()
            except ProxyUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def metrics(self) -> str:
        """The Prometheus text of `/metrics` (byte counters per proxy and direction)."""
        return str(self.request("GET", "/metrics", text=True))

    def proxies(self) -> dict[str, Proxy]:
        return {name: self._proxy(p) for name, p in self.request("GET", "/proxies").items()}

    def proxy(self, name: str) -> Proxy:
        return self._proxy(self.request("GET", f"/proxies/{quote(name, safe='')}"))

    def create_proxy(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> Proxy:
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return self._proxy(self.request("POST", "/proxies", body))

    def populate(self, proxies: list[dict[str, Any]]) -> list[Proxy]:
        return [self._proxy(p) for p in self.request("POST", "/populate", proxies)["proxies"]]

    def reset(self) -> None:
        self.request("POST", "/reset")

    def attach_clock(self, path: str | None, seed: int = 0) -> str:
        """Our extension: run the toxics on the virtual clock whose socket is at `path`,
        their draws seeded by `seed` (None: back to wall time). Returns the proxy's clock,
        `virtual` or `wall`."""
        body = {"clock": path, "seed": seed}
        return str(self.request("POST", "/testbed/clock", body)["clock"])
