"""The proxies side of the Toxiproxy HTTP API: status codes, exact error bodies, JSON shapes and
the effect of each call on real listeners, as the compatibility reference describes them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
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
    read_to_end,
    recv_exactly,
    round_trip,
    source,
)

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def assert_error(reply, status: int, message: str) -> None:
    """A Toxiproxy error: the status, `{"error","status"}` JSON plus newline, as text/plain."""
    assert reply.status == status, reply
    assert reply.json() == {"error": message, "status": status}, reply
    assert reply.body.endswith(b"\n"), reply
    assert (reply.header("Content-Type") or "").startswith("text/plain"), reply.headers


def greeter(tcp_server: Callable, greeting: bytes) -> TcpServer:
    """An upstream that says who it is on accept and then listens."""
    return tcp_server(source(greeting, then_close=False))


# --------------------------------------------------------------------------- cross-cutting


def test_every_response_carries_a_request_id(api: Api, echo_proxy: dict) -> None:
    """Clients and logs correlate on X-Toxiproxy-Request-Id, success or error alike."""
    replies = [
        api.get("/version"),
        api.get("/proxies"),
        api.get("/proxies/echo"),
        api.get("/proxies/missing"),
        api.post("/proxies", raw=b"{not json"),
        api.get("/no/such/path"),
        api.delete("/version"),
    ]
    ids = [reply.header("X-Toxiproxy-Request-Id") for reply in replies]
    assert all(ids), list(zip(replies, ids, strict=True))
    assert len(set(ids)) == len(ids), "request ids must differ between requests"


def test_the_exact_error_body_of_a_missing_proxy(api: Api) -> None:
    """Clients match on the bytes: JSON with error then status, a newline, text/plain."""
    reply = api.get("/proxies/missing")
    assert reply.status == 404
    assert reply.body == b'{"error":"proxy not found","status":404}\n'
    assert (reply.header("Content-Type") or "").startswith("text/plain")


def test_browser_user_agents_are_forbidden(api: Api, echo_server: TcpServer) -> None:
    """A web page must not be able to drive the API (CSRF): Mozilla/ agents get 403."""
    assert api.get("/proxies", headers={"User-Agent": BROWSER}).status == 403
    body = {"name": "csrf", "listen": f"{LOOPBACK}:0", "upstream": echo_server.address}
    assert api.post("/proxies", body, headers={"User-Agent": BROWSER}).status == 403
    assert api.proxies() == {}
    assert api.get("/proxies", headers={"User-Agent": "curl/8.5.0"}).status == 200


def test_an_unknown_path_is_404(api: Api) -> None:
    for path in ("/", "/nope", "/proxies/a/b/c/d", "/versions"):
        assert api.get(path).status == 404, path


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/version"),
        ("POST", "/version"),
        ("PUT", "/proxies"),
        ("DELETE", "/proxies"),
        ("GET", "/reset"),
        ("GET", "/populate"),
        ("PUT", "/proxies/echo"),
        ("PUT", "/proxies/echo/toxics"),
    ],
)
def test_a_wrong_method_on_a_known_path_is_405(
    api: Api, echo_proxy: dict, method: str, path: str
) -> None:
    assert api.request(method, path).status == 405


def test_version_body_and_content_type(api: Api) -> None:
    """testcontainers waits on /version and some clients parse it."""
    reply = api.get("/version")
    assert reply.status == 200
    assert reply.json() == {"version": "2.12.0"}
    assert reply.body.endswith(b"\n")
    content_type = (reply.header("Content-Type") or "").replace(" ", "").lower()
    assert content_type == "application/json;charset=utf-8"


# --------------------------------------------------------------------------- create and list


def test_no_proxies_is_an_empty_object(api: Api) -> None:
    reply = api.get("/proxies")
    assert reply.status == 200
    assert reply.json() == {}


def test_create_answers_201_with_the_proxy_enabled_by_default(
    api: Api, echo_server: TcpServer
) -> None:
    port = free_port()
    body = {"name": "db", "listen": f"{LOOPBACK}:{port}", "upstream": echo_server.address}
    reply = api.post("/proxies", body)
    assert reply.status == 201, reply
    proxy = reply.json()
    assert set(proxy) == PROXY_KEYS
    assert proxy == {
        "name": "db",
        "listen": f"{LOOPBACK}:{port}",
        "upstream": echo_server.address,
        "enabled": True,
        "toxics": [],
    }
    assert api.proxies() == {"db": proxy}
    assert api.proxy("db") == proxy
    with connect(port) as client:
        round_trip(client)


def test_listen_reports_the_bound_address(api: Api, echo_server: TcpServer) -> None:
    """`localhost:0` is reported as 127.0.0.1 and the port the kernel chose, which works."""
    proxy = api.create_proxy("db", echo_server.address, listen="localhost:0")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", proxy["listen"]), proxy
    port = listen_port(proxy)
    assert port != 0
    assert api.proxy("db")["listen"] == proxy["listen"]
    with connect(port) as client:
        round_trip(client)


def test_create_disabled_then_enable(api: Api, echo_server: TcpServer) -> None:
    port = free_port()
    proxy = api.create_proxy("db", echo_server.address, listen=f"{LOOPBACK}:{port}", enabled=False)
    assert proxy["enabled"] is False
    assert_refused(port)
    enabled = api.update_proxy("db", enabled=True)
    assert enabled["enabled"] is True
    assert enabled["listen"] == f"{LOOPBACK}:{port}"
    with connect(port) as client:
        round_trip(client)


def test_missing_name_or_upstream_is_400(api: Api, echo_server: TcpServer) -> None:
    listen = f"{LOOPBACK}:0"
    assert_error(
        api.post("/proxies", {"listen": listen, "upstream": echo_server.address}),
        400,
        "missing required field: name",
    )
    assert_error(
        api.post("/proxies", {"name": "db", "listen": listen}),
        400,
        "missing required field: upstream",
    )
    assert api.proxies() == {}


def test_a_body_that_is_not_json_is_400(api: Api) -> None:
    reply = api.post("/proxies", raw=b"{not json")
    assert reply.status == 400, reply
    assert reply.json()["status"] == 400
    assert reply.error.startswith("bad request body"), reply
    assert api.proxies() == {}


def test_name_clash_is_409_checked_before_binding(api: Api, echo_server: TcpServer) -> None:
    """The second `db` asks for a port in use: the name clash wins, 409 and not 500."""
    first = api.create_proxy("db", echo_server.address)
    assert_error(
        api.post("/proxies", {"name": "db", "listen": first["listen"], "upstream": "x:1"}),
        409,
        "proxy already exists",
    )
    other = free_port()
    assert_error(
        api.post(
            "/proxies",
            {"name": "db", "listen": f"{LOOPBACK}:{other}", "upstream": echo_server.address},
        ),
        409,
        "proxy already exists",
    )
    assert_refused(other)
    assert api.proxies() == {"db": first}


def test_a_port_in_use_is_500_and_the_proxy_is_not_stored(api: Api, echo_server: TcpServer) -> None:
    with held_port() as port:
        reply = api.post(
            "/proxies",
            {"name": "db", "listen": f"{LOOPBACK}:{port}", "upstream": echo_server.address},
        )
    assert reply.status == 500, reply
    assert reply.json()["status"] == 500
    assert "address already in use" in reply.error.lower(), reply
    assert api.get("/proxies/db").status == 404
    assert api.proxies() == {}
    api.create_proxy("db", echo_server.address)  # the name is still free


def test_a_port_used_by_another_proxy_is_500(api: Api, echo_server: TcpServer) -> None:
    first = api.create_proxy("one", echo_server.address)
    reply = api.post(
        "/proxies", {"name": "two", "listen": first["listen"], "upstream": echo_server.address}
    )
    assert reply.status == 500, reply
    assert "address already in use" in reply.error.lower(), reply
    assert set(api.proxies()) == {"one"}


def test_unknown_json_fields_are_ignored(api: Api, echo_server: TcpServer) -> None:
    body = {
        "name": "db",
        "listen": f"{LOOPBACK}:0",
        "upstream": echo_server.address,
        "comment": "from a newer client",
        "extra": {"nested": [1, 2]},
    }
    reply = api.post("/proxies", body)
    assert reply.status == 201, reply
    assert set(reply.json()) == PROXY_KEYS


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_the_request_content_type_is_never_checked(
    api: Api, echo_server: TcpServer, content_type: str | None
) -> None:
    """The Java client posts JSON labelled as a form."""
    raw = json.dumps(
        {"name": "db", "listen": f"{LOOPBACK}:0", "upstream": echo_server.address}
    ).encode()
    reply = api.post("/proxies", raw=raw, headers={"Content-Type": content_type})
    assert reply.status == 201, reply


# --------------------------------------------------------------------------- get, update


def test_get_a_missing_proxy_is_404(api: Api) -> None:
    assert_error(api.get("/proxies/missing"), 404, "proxy not found")


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_partial_update_keeps_the_fields_not_given(
    api: Api, echo_server: TcpServer, tcp_server: Callable, method: str
) -> None:
    """Clients update with POST (most) or PATCH (Go): a missing field keeps its value."""
    created = api.create_proxy("db", echo_server.address)
    other = tcp_server(source(b"B", then_close=False))
    reply = api.request(method, "/proxies/db", {"upstream": other.address})
    assert reply.status == 200, reply
    assert reply.json() == {**created, "upstream": other.address}
    reply = api.request(method, "/proxies/db", {"enabled": False})
    assert reply.status == 200, reply
    assert reply.json() == {**created, "upstream": other.address, "enabled": False}
    assert api.proxy("db") == reply.json()


def test_update_ignores_the_name(api: Api, echo_server: TcpServer) -> None:
    created = api.create_proxy("db", echo_server.address)
    assert api.update_proxy("db", name="renamed") == created
    assert api.get("/proxies/renamed").status == 404
    assert set(api.proxies()) == {"db"}


def test_update_of_a_missing_proxy_is_404(api: Api) -> None:
    assert_error(api.post("/proxies/missing", {"enabled": False}), 404, "proxy not found")
    assert_error(api.patch("/proxies/missing", {"enabled": False}), 404, "proxy not found")


def test_update_with_a_bad_body_is_400(api: Api, echo_proxy: dict) -> None:
    reply = api.post("/proxies/echo", raw=b"[1, 2")
    assert reply.status == 400, reply
    assert reply.error.startswith("bad request body"), reply
    assert api.proxy("echo") == echo_proxy


def test_changing_the_upstream_drops_connections_and_uses_the_new_one(
    api: Api, tcp_server: Callable
) -> None:
    first = greeter(tcp_server, b"A")
    second = greeter(tcp_server, b"B")
    port = listen_port(api.create_proxy("db", first.address))
    with connect(port) as old:
        assert recv_exactly(old, 1) == b"A"
        api.update_proxy("db", upstream=second.address)
        assert read_to_end(old, 1.0).how in ("eof", "reset")
    with connect(port) as new:
        assert recv_exactly(new, 1) == b"B"


def test_changing_listen_rebinds(api: Api, echo_server: TcpServer) -> None:
    proxy = api.create_proxy("db", echo_server.address)
    old_port = listen_port(proxy)
    new_port = free_port()
    with connect(old_port) as live:
        round_trip(live)
        updated = api.update_proxy("db", listen=f"{LOOPBACK}:{new_port}")
        assert updated["listen"] == f"{LOOPBACK}:{new_port}"
        assert read_to_end(live, 1.0).how in ("eof", "reset")
    assert_refused(old_port)
    with connect(new_port) as client:
        round_trip(client)


def test_rebinding_to_a_port_in_use_is_500(api: Api, echo_server: TcpServer) -> None:
    api.create_proxy("db", echo_server.address)
    with held_port() as port:
        reply = api.post("/proxies/db", {"listen": f"{LOOPBACK}:{port}"})
    assert reply.status == 500, reply
    assert "address already in use" in reply.error.lower(), reply


def test_disable_closes_connections_and_enable_keeps_the_port(
    api: Api, echo_server: TcpServer
) -> None:
    """A port-0 proxy must come back on the port it reported, or clients lose it."""
    proxy = api.create_proxy("db", echo_server.address, listen="localhost:0")
    port = listen_port(proxy)
    with connect(port) as live:
        round_trip(live)
        assert api.update_proxy("db", enabled=False)["enabled"] is False
        assert read_to_end(live, 1.0).how in ("eof", "reset")
    assert_refused(port)
    assert api.update_proxy("db", enabled=True)["listen"] == proxy["listen"]
    with connect(port) as client:
        round_trip(client)


# --------------------------------------------------------------------------- delete, reset


def test_delete_is_204_then_404(api: Api, echo_server: TcpServer) -> None:
    port = listen_port(api.create_proxy("db", echo_server.address))
    with connect(port) as live:
        round_trip(live)
        reply = api.delete("/proxies/db")
        assert reply.status == 204, reply
        assert reply.body == b""
        assert read_to_end(live, 1.0).how in ("eof", "reset")
    assert_refused(port)
    assert_error(api.get("/proxies/db"), 404, "proxy not found")
    assert_error(api.delete("/proxies/db"), 404, "proxy not found")
    assert api.proxies() == {}


def test_reset_enables_everything_removes_toxics_and_deletes_nothing(
    api: Api, echo_server: TcpServer
) -> None:
    up = api.create_proxy("up", echo_server.address)
    down = api.create_proxy("down", echo_server.address)
    api.add_toxic("up", "latency", latency=1000)
    api.add_toxic("down", "bandwidth", stream="upstream", rate=1)
    api.update_proxy("down", enabled=False)
    reply = api.post("/reset")
    assert reply.status == 204, reply
    assert reply.body == b""
    assert api.proxies() == {"up": up, "down": down}
    for proxy in (up, down):
        with connect(listen_port(proxy)) as client:
            assert round_trip(client) < 0.5


def test_reset_with_nothing_to_reset_is_204(api: Api) -> None:
    assert api.post("/reset").status == 204
    assert api.proxies() == {}
