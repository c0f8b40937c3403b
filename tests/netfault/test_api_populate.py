"""POST /populate and `-config` at boot: many proxies at once, validated before anything is
created, applied in order, and idempotent for proxies that did not change."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from netfault_support import (
    LOOPBACK,
    PROXY_KEYS,
    Api,
    TcpServer,
    assert_refused,
    connect,
    free_port,
    held_port,
    listen_port,
    recv_exactly,
    round_trip,
    running_toxiproxy,
    source,
)


def item(name: str, upstream: str, port: int | None = None, **extra: object) -> dict:
    return {
        "name": name,
        "listen": f"{LOOPBACK}:{port or free_port()}",
        "upstream": upstream,
        **extra,
    }


def test_populate_creates_proxies_enabled_by_default(api: Api, echo_server: TcpServer) -> None:
    items = [item("one", echo_server.address), item("two", echo_server.address)]
    reply = api.post("/populate", items)
    assert reply.status == 201, reply
    body = reply.json()
    assert set(body) == {"proxies"}
    assert [proxy["name"] for proxy in body["proxies"]] == ["one", "two"]
    for proxy, sent in zip(body["proxies"], items, strict=True):
        assert set(proxy) == PROXY_KEYS
        assert proxy["enabled"] is True
        assert proxy["listen"] == sent["listen"]
        assert proxy["upstream"] == sent["upstream"]
    assert set(api.proxies()) == {"one", "two"}
    for sent in items:
        with connect(listen_port(sent)) as client:
            round_trip(client)


def test_populate_can_create_disabled_proxies(api: Api, echo_server: TcpServer) -> None:
    off = item("off", echo_server.address, enabled=False)
    reply = api.post("/populate", [off])
    assert reply.status == 201, reply
    assert reply.json()["proxies"][0]["enabled"] is False
    assert api.proxy("off")["enabled"] is False
    assert_refused(listen_port(off))


def test_an_empty_populate_is_201_with_no_proxies(api: Api) -> None:
    reply = api.post("/populate", [])
    assert reply.status == 201, reply
    assert reply.json() == {"proxies": []}


def test_an_identical_proxy_is_left_untouched_and_keeps_its_toxics(
    api: Api, echo_server: TcpServer
) -> None:
    """Test suites populate before every test: that must not wipe toxics or connections."""
    same = item("db", echo_server.address)
    assert api.post("/populate", [same]).status == 201
    toxic = api.add_toxic("db", "latency", latency=50)
    with connect(listen_port(same)) as live:
        round_trip(live)
        reply = api.post("/populate", [same])
        assert reply.status == 201, reply
        assert [proxy["name"] for proxy in reply.json()["proxies"]] == ["db"]
        assert api.toxics("db") == [toxic]
        round_trip(live)  # the live connection survived


def test_an_identical_proxy_keeps_its_enabled_state(api: Api, echo_server: TcpServer) -> None:
    same = item("db", echo_server.address)
    assert api.post("/populate", [same]).status == 201
    api.update_proxy("db", enabled=False)
    assert api.post("/populate", [same]).status == 201
    assert api.proxy("db")["enabled"] is False


def test_a_changed_proxy_is_replaced_and_loses_its_toxics(api: Api, tcp_server: Callable) -> None:
    first = tcp_server(source(b"A", then_close=False))
    second = tcp_server(source(b"B", then_close=False))
    port = free_port()
    assert api.post("/populate", [item("db", first.address, port)]).status == 201
    api.add_toxic("db", "latency", latency=50)
    reply = api.post("/populate", [item("db", second.address, port)])
    assert reply.status == 201, reply
    proxy = api.proxy("db")
    assert proxy["upstream"] == second.address
    assert proxy["listen"] == f"{LOOPBACK}:{port}"
    assert proxy["toxics"] == []
    with connect(port) as client:
        assert recv_exactly(client, 1) == b"B"


def test_a_bad_item_fails_the_batch_with_its_index_and_creates_nothing(
    api: Api, echo_server: TcpServer
) -> None:
    good = item("good", echo_server.address)
    reply = api.post("/populate", [good, {"name": "half", "listen": f"{LOOPBACK}:0"}])
    assert reply.status == 400, reply
    assert reply.json() == {"error": "missing required field: upstream at proxy 2", "status": 400}
    reply = api.post("/populate", [good, good, {"upstream": echo_server.address}])
    assert reply.status == 400, reply
    assert reply.json() == {"error": "missing required field: name at proxy 3", "status": 400}
    assert api.proxies() == {}
    assert_refused(listen_port(good))


def test_a_body_that_is_not_a_list_of_proxies_is_400(api: Api) -> None:
    for raw in (b"{not json", b'{"name": "x"}'):
        reply = api.post("/populate", raw=raw)
        assert reply.status == 400, reply
        assert reply.error.startswith("bad request body"), reply
    assert api.proxies() == {}


def test_a_bind_failure_keeps_the_proxies_created_before_it(
    api: Api, echo_server: TcpServer
) -> None:
    before = item("before", echo_server.address)
    after = item("after", echo_server.address)
    with held_port() as port:
        reply = api.post("/populate", [before, item("clash", echo_server.address, port), after])
    assert reply.status == 500, reply
    body = reply.json()
    assert body["status"] == 500
    assert "address already in use" in body["error"].lower(), reply
    assert [proxy["name"] for proxy in body["proxies"]] == ["before"]
    assert set(api.proxies()) == {"before"}
    with connect(listen_port(before)) as client:
        round_trip(client)
    assert_refused(listen_port(after))


def test_config_populates_at_boot(tmp_path: Path, echo_server: TcpServer) -> None:
    """`-config FILE` is how the Docker image and CI set proxies up before any client runs."""
    on = item("boot_on", echo_server.address)
    off = item("boot_off", echo_server.address, enabled=False)
    config = tmp_path / "toxiproxy.json"
    config.write_text(json.dumps([on, off]))
    with running_toxiproxy(tmp_path / "boot.log", "-config", str(config)) as server:
        proxies = server.api.proxies()
        assert set(proxies) == {"boot_on", "boot_off"}
        assert proxies["boot_on"]["enabled"] is True
        assert proxies["boot_on"]["listen"] == on["listen"]
        assert proxies["boot_off"]["enabled"] is False
        with connect(listen_port(on)) as client:
            round_trip(client)
        assert_refused(listen_port(off))
