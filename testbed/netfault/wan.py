"""The WAN between sites as one thing to break: partitions, degradation, heal.

The WAN is the set of proxies on every cross-site route (ICON b to its remote IDB, GIM to
remote IDBs, replication and base backups). A route's proxy carries client-site to
server-site bytes on its `upstream` stream and the answers on `downstream`, so a one-way
fault from site A to site B is a toxic on the streams that travel A -> B.

- `partition(a, b, mode="reset")`: proxies disabled, connections refused and cut (a router
  that answers "unreachable").
- `partition(a, b, mode="blackhole")`: a `timeout` toxic with timeout 0 on both streams:
  bytes vanish and connections hang, as when a WAN link silently drops packets; only
  timeouts and keepalives notice.
- one way (`direction="site1->site2"`): blackhole drops that direction only; reset sends a
  TCP RST on the first byte in that direction (`reset_peer`).

Every fault is recorded (wall time, scenario time when a clock is given, what, where) for
the scenario history; `residue()` lists whatever is still applied.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from testbed.errors import TestbedError
from testbed.netfault.client import Proxy, Toxic, ToxiproxyClient, ToxiproxyError

log = logging.getLogger("testbed.wan")

Mode = Literal["reset", "blackhole"]
PREFIX = "wan-"  # names of the toxics this module applies


@dataclass(frozen=True)
class RouteProxy:
    """The proxy on one cross-site route."""

    proxy: str
    client_site: str
    server_site: str


@dataclass
class Fault:
    wall_time: float
    scenario_time: float | None
    action: str
    sites: tuple[str, ...]
    proxies: tuple[str, ...]
    detail: dict[str, Any] = field(default_factory=dict)


_PROXY_SENT = re.compile(
    r'^toxiproxy_proxy_sent_bytes_total\{direction="(?P<direction>\w+)",'
    r'[^}]*proxy="(?P<proxy>[^"]+)"[^}]*\} (?P<value>\d+)',
    re.MULTILINE,
)
_LINK_SENT = re.compile(
    r'^bc_testbed_link_sent_bytes_total\{link="(?P<link>[^"]+)"\} (?P<value>\d+)', re.MULTILINE
)


@dataclass(frozen=True)
class Traffic:
    """A snapshot of the WAN proxy's byte counters."""

    proxies: dict[tuple[str, str], int]  # (proxy, "upstream" | "downstream") -> bytes sent
    links: dict[str, int]  # shared link ("site1->site2") -> bytes sent

    @classmethod
    def from_metrics(cls, text: str) -> Traffic:
        """From the Prometheus text of a proxy server's `/metrics`."""
        proxies = {
            (m["proxy"], m["direction"]): int(m["value"]) for m in _PROXY_SENT.finditer(text)
        }
        return cls(proxies, {m["link"]: int(m["value"]) for m in _LINK_SENT.finditer(text)})

    def since(self, earlier: Traffic) -> Traffic:
        return Traffic(
            {k: v - earlier.proxies.get(k, 0) for k, v in self.proxies.items()},
            {k: v - earlier.links.get(k, 0) for k, v in self.links.items()},
        )


class Wan:
    def __init__(
        self,
        client: ToxiproxyClient,
        routes: list[RouteProxy],
        scenario_now: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.routes = routes
        self.scenario_now = scenario_now
        self.history: list[Fault] = []
        self._warned_per_connection = False

    # --- which proxies and streams ------------------------------------------------------

    def _sites(self) -> set[str]:
        return {r.client_site for r in self.routes} | {r.server_site for r in self.routes}

    def _check(self, *sites: str) -> None:
        known = self._sites()
        for site in sites:
            if site not in known:
                raise TestbedError(
                    f"no WAN route touches site '{site}' (sites: {', '.join(sorted(known))})"
                )

    def between(self, a: str, b: str) -> list[RouteProxy]:
        return [r for r in self.routes if {r.client_site, r.server_site} == {a, b}]

    def streams_from(self, source: str, dest: str) -> list[tuple[str, str]]:
        """(proxy, stream) pairs that carry bytes from site `source` to site `dest`."""
        pairs = []
        for route in self.between(source, dest):
            stream = "upstream" if route.client_site == source else "downstream"
            pairs.append((route.proxy, stream))
        return pairs

    def add_route(self, route: RouteProxy) -> None:
        """A route added while the WAN is up (a replacement site, a reversed replication)
        gets the faults its link carries now: a new connection must not bypass a cut or a
        slow link only because its proxy is younger than the fault."""
        siblings = self.between(route.client_site, route.server_site)
        self.routes.append(route)
        if not siblings:
            return
        model = self._proxy(siblings[0].proxy)
        flip = siblings[0].client_site != route.client_site
        proxy = self._proxy(route.proxy)
        for toxic in model.toxics:
            stream = toxic.stream
            if flip:
                stream = "downstream" if stream == "upstream" else "upstream"
            name = toxic.name.replace(toxic.stream, stream) if flip else toxic.name
            proxy.add_toxic(
                toxic.type, stream=stream, name=name, toxicity=toxic.toxicity, **toxic.attributes
            )
        if not model.enabled:
            proxy.disable()

    def _record(
        self, action: str, sites: tuple[str, ...], proxies: list[str], **detail: Any
    ) -> None:
        now = self.scenario_now() if self.scenario_now else None
        self.history.append(
            Fault(time.time(), now, action, sites, tuple(sorted(set(proxies))), detail)
        )

    def _proxy(self, name: str) -> Proxy:
        return self.client.proxy(name)

    @staticmethod
    def _on_each(items: Iterable[Any], change: Callable[[Any], object]) -> None:
        """Apply `change` to every proxy of a link at once: a fault takes effect when its
        last proxy has it, and API calls in a row on a busy machine take scenario minutes.
        The first error, if any, is raised once all are done."""
        todo = list(items)
        if len(todo) <= 1:
            for item in todo:
                change(item)
            return
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            for future in [pool.submit(change, item) for item in todo]:
                future.result()

    # --- faults -------------------------------------------------------------------------

    def partition(self, a: str, b: str, mode: Mode = "reset", direction: str | None = None) -> None:
        """Cut the WAN between sites `a` and `b` (both ways, or one way `"a->b"`)."""
        self._check(a, b)
        if mode not in ("reset", "blackhole"):
            raise TestbedError(f"partition mode '{mode}' is not one of: reset, blackhole")
        if direction is None:
            targets = self.streams_from(a, b) + self.streams_from(b, a)
            if mode == "reset":
                self._on_each(self.between(a, b), lambda route: self._proxy(route.proxy).disable())
        else:
            source, _, dest = direction.partition("->")
            if {source.strip(), dest.strip()} != {a, b}:
                raise TestbedError(f"direction '{direction}' must be '{a}->{b}' or '{b}->{a}'")
            targets = self.streams_from(source.strip(), dest.strip())
        if mode == "blackhole" or direction is not None:
            toxic_type = "timeout" if mode == "blackhole" else "reset_peer"

            def cut(target: tuple[str, str]) -> None:
                proxy, stream = target
                self._proxy(proxy).add_toxic(
                    toxic_type, stream=stream, name=f"{PREFIX}partition-{stream}", timeout=0
                )

            self._on_each(targets, cut)
        self._record(
            "partition", (a, b), [p for p, _ in targets], mode=mode, direction=direction or "both"
        )

    def degrade(
        self,
        a: str,
        b: str,
        latency: int = 0,
        jitter: int = 0,
        bandwidth: int | None = None,
    ) -> None:
        """Slow the WAN both ways: `latency`/`jitter` in ms each way, `bandwidth` in KB/s
        (the link's capacity each way, shared by every connection that crosses it)."""
        self._check(a, b)
        targets = [(p, s, f"{a}->{b}") for p, s in self.streams_from(a, b)]
        targets += [(p, s, f"{b}->{a}") for p, s in self.streams_from(b, a)]
        per_connection: list[str] = []

        def slow(target: tuple[str, str, str]) -> None:
            proxy, stream, link = target
            handle = self._proxy(proxy)
            if latency or jitter:
                self._put(
                    handle,
                    f"{PREFIX}latency-{stream}",
                    "latency",
                    stream,
                    latency=latency,
                    jitter=jitter,
                )
            if bandwidth is not None:
                applied = self._put(
                    handle,
                    f"{PREFIX}bandwidth-{stream}",
                    "bandwidth",
                    stream,
                    rate=bandwidth,
                    group=link,
                )
                if applied.attributes.get("group") != link:
                    per_connection.append(proxy)

        self._on_each(targets, slow)
        detail: dict[str, Any] = {"latency": latency, "jitter": jitter, "bandwidth": bandwidth}
        if bandwidth is not None:
            detail["bandwidth_shared"] = not per_connection
            if per_connection and not self._warned_per_connection:
                self._warned_per_connection = True
                log.warning(
                    "warning: the WAN proxy does not share a link's bandwidth (a real "
                    "Toxiproxy?): %s KB/s applies to each connection on its own",
                    bandwidth,
                )
        self._record("degrade", (a, b), [p for p, _, _ in targets], **detail)

    def toxic(
        self,
        a: str,
        b: str,
        type: str,
        stream: str | None = None,
        toxicity: float = 1.0,
        **attributes: Any,
    ) -> None:
        """Any toxic on every proxy of the link (`stream` None: both streams)."""
        self._check(a, b)
        streams = ("upstream", "downstream") if stream is None else (stream,)
        proxies = [r.proxy for r in self.between(a, b)]

        def poison(proxy: str) -> None:
            handle = self._proxy(proxy)
            for each in streams:
                self._put(
                    handle, f"{PREFIX}{type}-{each}", type, each, toxicity=toxicity, **attributes
                )

        self._on_each(proxies, poison)
        self._record(
            "toxic",
            (a, b),
            proxies,
            type=type,
            streams=list(streams),
            toxicity=toxicity,
            attributes=attributes,
        )

    @staticmethod
    def _put(
        proxy: Proxy, name: str, type: str, stream: str, toxicity: float = 1.0, **attributes: Any
    ) -> Toxic:
        """Add the toxic, or update it if this link already has one of that name."""
        try:
            return proxy.add_toxic(type, stream=stream, name=name, toxicity=toxicity, **attributes)
        except ToxiproxyError as exc:
            if exc.status != 409:
                raise
            return proxy.update_toxic(name, toxicity=toxicity, **attributes)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Remove every partition and toxic between `a` and `b` (or on the whole WAN)."""
        if (a is None) != (b is None):
            raise TestbedError("heal takes two sites, or none for the whole WAN")
        if a is not None:
            self._check(a, b)  # type: ignore[arg-type]
        routes = self.between(a, b) if a is not None else self.routes  # type: ignore[arg-type]
        # One listing for all of them: the link stays cut until its last proxy is healed,
        # so every call saved is time the outage does not overrun its step.
        # One listing, then every toxic at once: the first removed lets traffic through
        # that keeps the proxy busy, and a removal queued behind it keeps the link half cut.
        everything = self.client.proxies()
        proxies = [everything.get(r.proxy) or self._proxy(r.proxy) for r in routes]
        self._on_each(
            [(proxy, toxic.name) for proxy in proxies for toxic in proxy.toxics],
            lambda pair: pair[0].remove_toxic(pair[1]),
        )
        self._on_each([p for p in proxies if not p.enabled], lambda proxy: proxy.enable())
        sites = (a, b) if a is not None else tuple(sorted(self._sites()))
        self._record("heal", sites, [r.proxy for r in routes])  # type: ignore[arg-type]

    def link_rate(self, source: str, dest: str) -> int | None:
        """The bandwidth (KB/s) `degrade` set on the `source` -> `dest` way, if any."""
        for proxy, stream in self.streams_from(source, dest):
            for toxic in self._proxy(proxy).toxics:
                if toxic.name == f"{PREFIX}bandwidth-{stream}":
                    return int(toxic.attributes["rate"])
        return None

    def traffic(self) -> Traffic:
        """Bytes sent so far per (proxy, stream) and per shared link, from the proxy's
        counters; empty when the proxy server keeps none (an older Toxiproxy)."""
        try:
            return Traffic.from_metrics(self.client.metrics())
        except ToxiproxyError:
            return Traffic({}, {})

    def residue(self) -> list[str]:
        """Faults still applied, one line each (empty when the WAN is whole)."""
        left = []
        for route in self.routes:
            proxy = self._proxy(route.proxy)
            if not proxy.enabled:
                left.append(f"{proxy.name}: disabled")
            left += [f"{proxy.name}: toxic {t.name} ({t.type}, {t.stream})" for t in proxy.toxics]
        return left
