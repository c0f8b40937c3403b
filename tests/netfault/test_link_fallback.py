"""The testbed driving a server without shared links (a real Toxiproxy): `Wan.degrade` falls
back to per-connection limits and says so in one warning line. The server here is ours
started with `-reference`, which ignores our extensions exactly as the reference does."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netfault_support import TcpServer, ToxiproxyServer, running_toxiproxy, sink

from testbed.netfault.client import ToxiproxyClient
from testbed.netfault.wan import RouteProxy, Wan


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[ToxiproxyServer]:
    with running_toxiproxy(tmp_path / "reference.log", "-reference") as server:
        yield server


def test_degrade_falls_back_to_per_connection_limits_and_warns_once(
    reference: ToxiproxyServer,
    tcp_server: Callable[..., TcpServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = tcp_server(sink)
    client = ToxiproxyClient(reference.url)
    for name in ("a-to-b", "b-to-a"):
        client.create_proxy(name, upstream.address)
    wan = Wan(client, [RouteProxy("a-to-b", "a", "b"), RouteProxy("b-to-a", "b", "a")])
    with caplog.at_level(logging.WARNING, logger="testbed.wan"):
        wan.degrade("a", "b", bandwidth=1000)
        wan.degrade("a", "b", bandwidth=2000)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "each connection on its own" in warnings[0] and "\n" not in warnings[0]
    assert [f.detail["bandwidth_shared"] for f in wan.history] == [False, False]
    toxics = client.proxy("a-to-b").toxics
    assert {t.attributes.get("group") for t in toxics} == {None}  # the server dropped it


def test_our_own_server_shares_the_link_and_says_nothing(
    toxiproxy: ToxiproxyServer,
    tcp_server: Callable[..., TcpServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = tcp_server(sink)
    client = ToxiproxyClient(toxiproxy.url)
    client.create_proxy("a-to-b", upstream.address)
    wan = Wan(client, [RouteProxy("a-to-b", "a", "b")])
    with caplog.at_level(logging.WARNING, logger="testbed.wan"):
        wan.degrade("a", "b", bandwidth=1000)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert wan.history[0].detail["bandwidth_shared"] is True
