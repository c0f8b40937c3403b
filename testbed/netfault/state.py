"""The set of proxies a server holds, and the operations that span several of them
(create, populate, reset, metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import ItemsView
from typing import Any

from testbed.netfault import timebase
from testbed.netfault.chain import PROXY_EXISTS, ApiError, ToxicChain, bad_request
from testbed.netfault.links import Links
from testbed.netfault.proxy import Proxy

DEFAULT_LISTEN = "127.0.0.1:0"  # loopback, never every interface, unless asked


def _missing(field: str, index: int | None = None) -> ApiError:
    where = f" at proxy {index}" if index is not None else ""
    return ApiError(f"missing required field: {field}{where}", 400)


def _checked(body: Any, index: int | None = None) -> dict[str, Any]:
    """A proxy body with its required fields, and its toxics (an extension) pre-built."""
    if not isinstance(body, dict):
        raise bad_request("a proxy must be a JSON object")
    for field in ("name", "upstream"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise _missing(field, index)
    listen = body.get("listen") or DEFAULT_LISTEN
    enabled = body.get("enabled", True)
    if not isinstance(listen, str) or not isinstance(enabled, bool):
        raise bad_request("listen must be a string and enabled true or false")
    toxics = body.get("toxics") or []
    if not isinstance(toxics, list) or not all(isinstance(t, dict) for t in toxics):
        raise bad_request("toxics must be a list of toxic objects")
    built = [ToxicChain.build(t) for t in toxics]
    if len({t.name for t in built}) != len(built):
        raise ApiError("toxic already exists", 409)
    return {**body, "listen": listen, "enabled": enabled, "toxics": built}


class ProxyCollection:
    def __init__(self) -> None:
        self._proxies: dict[str, Proxy] = {}
        self.links = Links()

    def clock_state(self) -> tuple[bool, list[str], list[str]]:
        """For the virtual clock: whether any connection has work it can do now, the
        proxies a toxic of which holds bytes until a later instant or swallows them, and
        those of them with bytes due at a later instant (that will land)."""
        busy, held, due = False, [], []
        for name, proxy in self._proxies.items():
            holds = lands = False
            for conn in proxy.connections:
                conn_busy, conn_holds, conn_due = conn.clock_state()
                busy = busy or conn_busy
                holds = holds or conn_holds
                lands = lands or conn_due
            if holds:
                held.append(name)
            if lands:
                due.append(name)
        return busy, held, due

    def items(self) -> ItemsView[str, Proxy]:
        return self._proxies.items()

    def get(self, name: str) -> Proxy | None:
        return self._proxies.get(name)

    async def create(self, body: Any) -> Proxy:
        checked = _checked(body)
        if checked["name"] in self._proxies:
            raise ApiError(*PROXY_EXISTS)  # before binding, as the reference does
        return await self._add(checked)

    async def _add(self, checked: dict[str, Any]) -> Proxy:
        proxy = Proxy(checked["name"], checked["listen"], checked["upstream"], self.links)
        for entry in checked["toxics"]:  # in place before the first client can connect
            proxy.chain.stream(entry.stream).append(entry)
        if checked["enabled"]:
            await proxy.start()
        self._proxies[proxy.name] = proxy
        return proxy

    async def populate(self, items: Any) -> tuple[list[Proxy], ApiError | None]:
        """Validate every item, then create them in order; stop at the first failure."""
        if not isinstance(items, list):
            raise bad_request("expected a JSON array of proxies")
        checked = [_checked(item, i + 1) for i, item in enumerate(items)]
        done: list[Proxy] = []
        for item in checked:
            existing = self._proxies.get(item["name"])
            if existing is not None:
                same_listen = item["listen"] in (existing.listen, existing.requested_listen)
                if same_listen and item["upstream"] == existing.upstream:
                    done.append(existing)  # identical: left as it is, toxics and all
                    continue
                self.remove(existing.name)
            try:
                done.append(await self._add(item))
            except ApiError as exc:
                return done, exc
        return done, None

    def remove(self, name: str) -> None:
        proxy = self._proxies.pop(name)
        proxy.stop()

    async def reset(self) -> None:
        """Every proxy enabled, every toxic gone; nothing deleted."""
        for proxy in self._proxies.values():
            await proxy.start()
            proxy.remove_all_toxics()

    async def close(self) -> None:
        for name in list(self._proxies):
            self.remove(name)

    def metrics_text(self) -> str:
        lines = []
        for kind in ("received", "sent"):
            metric = f"toxiproxy_proxy_{kind}_bytes_total"
            lines += [
                f"# HELP {metric} The total number of bytes {kind} by the proxy.",
                f"# TYPE {metric} counter",
            ]
            for proxy in self._proxies.values():
                for direction, counters in proxy.counters.items():
                    labels = (
                        f'direction="{direction}",listener="{proxy.listen}",'
                        f'proxy="{proxy.name}",upstream="{proxy.upstream}"'
                    )
                    lines.append(f"{metric}{{{labels}}} {counters[kind]}")
        lines += [
            "# HELP toxiproxy_proxy_connections The number of live proxied connections.",
            "# TYPE toxiproxy_proxy_connections gauge",
        ]
        for proxy in self._proxies.values():
            lines.append(
                f'toxiproxy_proxy_connections{{proxy="{proxy.name}"}} {len(proxy.connections)}'
            )
        lines += [
            "# HELP bc_testbed_proxy_tasks Event-loop tasks alive in the proxy server.",
            "# TYPE bc_testbed_proxy_tasks gauge",
            f"bc_testbed_proxy_tasks {len(asyncio.all_tasks())}",
        ]
        lines += self.links.metrics_lines(timebase.current().now())
        return "\n".join(lines) + "\n"
