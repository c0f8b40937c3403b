"""Relay workers: a connection through a proxy without toxics is relayed by a worker process,
and that changes nothing a client can see: a toxic added to the proxy holds from the next
byte, nothing is lost when the connection comes back, the counters stay exact, a delete
cuts it, and a worker that dies takes only its own connections. Each holds for the C relay
loop and for the Python relay on either event loop."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netfault_support import (
    Api,
    TcpServer,
    ToxiproxyServer,
    connect,
    echo,
    listen_port,
    pattern,
    read_to_end,
    recv_exactly,
    round_trip,
    running_toxiproxy,
    send_in_background,
)

from testbed.netfault.loop import LOOP_ENV
from testbed.netfault.relayloop import RELAY_ENV

WORKERS = 2
C_LOOP_BUILT = importlib.util.find_spec("testbed.netfault._relayloop") is not None


@pytest.fixture(
    scope="module",
    params=[("auto", "c"), ("auto", "python"), ("asyncio", "python")],
    ids=["c", "python-auto", "python-asyncio"],
)
def toxiproxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ToxiproxyServer]:
    """The server with relay workers whatever the machine's core count, relaying with the C
    loop, and in Python on each event loop it may run on (uvloop when installed, and the
    standard library's)."""
    loop, relay = request.param
    if relay == "c" and not C_LOOP_BUILT:
        pytest.skip("the C relay loop is not built here (no compiler at install)")
    log = tmp_path_factory.mktemp("workers") / "server.log"
    env = {LOOP_ENV: loop, RELAY_ENV: relay}
    with running_toxiproxy(log, "-workers", str(WORKERS), env=env) as server:
        yield server


def metric(api: Api, name: str, **labels: str) -> int:
    """The sum of a metric's samples whose labels include `labels`."""
    text = api.get("/metrics").body.decode()
    total = 0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\d+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += int(match.group(2))
    return total


def lent(api: Api) -> int:
    return metric(api, "bc_testbed_proxy_worker_connections")


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def workers_of(server: ToxiproxyServer) -> list[int]:
    """The pids of the server's child processes."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.process.pid:
                pids.append(int(entry.name))
    return pids


def test_a_connection_without_toxics_is_relayed_by_a_worker_and_counted(
    api: Api, echo_proxy: dict
) -> None:
    payload = pattern(300_000)
    with connect(listen_port(echo_proxy)) as client:
        assert round_trip(client) < 1.0
        wait_until(lambda: lent(api) == 1)
        client.sendall(payload)
        assert recv_exactly(client, len(payload)) == payload
        expected = 4 + len(payload)
        for kind in ("received", "sent"):
            for direction in ("upstream", "downstream"):
                name = f"toxiproxy_proxy_{kind}_bytes_total"
                assert metric(api, name, direction=direction, proxy="echo") == expected
        assert metric(api, "toxiproxy_proxy_connections", proxy="echo") == 1


def test_a_toxic_added_to_a_lent_connection_holds_from_the_next_byte(
    api: Api, echo_proxy: dict
) -> None:
    with connect(listen_port(echo_proxy)) as client:
        assert round_trip(client) < 1.0
        wait_until(lambda: lent(api) == 1)
        api.add_toxic("echo", "latency", latency=200)
        assert round_trip(client) >= 0.2
        assert lent(api) == 0
        api.remove_toxic("echo", "latency_downstream")
        assert round_trip(client) < 0.2


def test_nothing_is_lost_or_reordered_when_a_connection_comes_back_mid_transfer(
    api: Api, echo_proxy: dict
) -> None:
    payload = pattern(16 << 20)
    with connect(listen_port(echo_proxy), timeout=30) as client:
        assert round_trip(client) < 1.0
        wait_until(lambda: lent(api) == 1)
        writer = send_in_background(client, payload, piece=256 * 1024, timeout=30)
        head = recv_exactly(client, 4 << 20, timeout=30)  # well under way, both ways
        api.add_toxic("echo", "noop", stream="upstream")
        received = head + recv_exactly(client, len(payload) - len(head), timeout=30)
        writer.result(30)
    assert received == payload
    assert lent(api) == 0


def test_what_a_worker_owes_both_peers_comes_back_first_and_in_order(
    api: Api, echo_proxy: dict
) -> None:
    """A client that sends without reading fills every buffer on the way: the worker then
    holds bytes for both peers when the connection is recalled."""
    payload = pattern(24 << 20)
    with connect(listen_port(echo_proxy), timeout=30) as client:
        assert round_trip(client) < 1.0
        wait_until(lambda: lent(api) == 1)
        writer = send_in_background(client, payload, timeout=30)
        time.sleep(0.5)  # until the echo, the worker and the client's buffers are full
        api.add_toxic("echo", "noop")
        assert lent(api) == 0
        received = recv_exactly(client, len(payload), timeout=30)
        writer.result(30)
    assert received == payload


def test_deleting_a_proxy_cuts_its_lent_connections(api: Api, echo_proxy: dict) -> None:
    with connect(listen_port(echo_proxy)) as client:
        assert round_trip(client) < 1.0
        wait_until(lambda: lent(api) == 1)
        api.delete_proxy("echo")
        ending = read_to_end(client, timeout=2.0)
    assert ending.how in ("eof", "reset")
    assert ending.elapsed < 1.0
    wait_until(lambda: lent(api) == 0)


def test_a_worker_that_dies_takes_only_its_own_connections(
    tmp_path: Path, tcp_server: Callable[..., TcpServer]
) -> None:
    upstream = tcp_server(echo)
    with running_toxiproxy(tmp_path / "server.log", "-workers", "2") as server:
        api = server.api
        port = listen_port(api.create_proxy("echo", upstream.address))
        with connect(port) as first, connect(port) as second:
            for client in (first, second):
                assert round_trip(client) < 1.0
            wait_until(lambda: lent(api) == 2)  # one on each worker: the least busy is chosen
            victim = workers_of(server)[0]
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: lent(api) == 1)
            endings = []
            for client in (first, second):
                try:
                    client.sendall(b"ping")
                    endings.append(read_to_end(client, timeout=0.5).how)
                except OSError:
                    endings.append("reset")
            assert sorted(endings) == ["eof", "open"] or sorted(endings) == ["open", "reset"]
            with connect(port) as third:
                assert round_trip(third) < 1.0
        assert server.process.poll() is None


def test_the_workers_stop_with_the_server(tmp_path: Path) -> None:
    with running_toxiproxy(tmp_path / "server.log", "-workers", "2") as server:
        wait_until(lambda: len(workers_of(server)) == 2)
        pids = workers_of(server)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) != WORKERS, reason="pinned with one per core")
def test_with_one_worker_per_core_each_keeps_to_its_own_unless_relaying_in_c(
    toxiproxy: ToxiproxyServer, request: pytest.FixtureRequest
) -> None:
    """Python relays keep a worker to each core; C threads, one per connection, go free."""
    cores = [os.sched_getaffinity(pid) for pid in workers_of(toxiproxy)]
    assert len(cores) == WORKERS
    if request.node.callspec.params["toxiproxy"][1] == "c":
        assert all(each == os.sched_getaffinity(0) for each in cores)
        return
    assert all(len(each) == 1 for each in cores)
    assert len(set.union(*cores)) == WORKERS


def test_a_lent_connection_runs_on_a_thread_of_its_own_with_the_c_loop(
    toxiproxy: ToxiproxyServer, request: pytest.FixtureRequest, api: Api, echo_proxy: dict
) -> None:
    """So that the tests above cover the C loop: a worker's thread count follows its
    connections there, and never does with the Python relay."""

    def threads() -> int:
        return sum(len(os.listdir(f"/proc/{pid}/task")) for pid in workers_of(toxiproxy))

    before = threads()
    with connect(listen_port(echo_proxy)) as client:
        assert round_trip(client) < 1.0
        wait_until(lambda: lent(api) == 1)
        during = threads()
    wait_until(lambda: lent(api) == 0)
    wait_until(lambda: threads() == before)
    in_c = request.node.callspec.params["toxiproxy"][1] == "c"
    assert during == before + (1 if in_c else 0)


def test_with_no_workers_the_server_relays_everything_itself(
    tmp_path: Path, tcp_server: Callable[..., TcpServer]
) -> None:
    upstream = tcp_server(echo)
    with running_toxiproxy(tmp_path / "server.log", "-workers", "0") as server:
        port = listen_port(server.api.create_proxy("echo", upstream.address))
        with connect(port) as client:
            assert round_trip(client) < 1.0
            assert (
                "bc_testbed_proxy_worker_connections"
                not in server.api.get("/metrics").body.decode()
            )
        assert workers_of(server) == []


def test_the_server_runs_on_the_loop_asked_for(
    toxiproxy: ToxiproxyServer, request: pytest.FixtureRequest
) -> None:
    """So that the tests above cover the standard library's loop as well as uvloop, and the
    C relay loop as well as the Python relay."""
    asked, relay = request.node.callspec.params["toxiproxy"]
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    expected = "uvloop" if asked == "auto" and has_uvloop else "asyncio"
    relays = "C" if relay == "c" else "Python"
    line = next(ln for ln in toxiproxy.log_tail().splitlines() if "listening on" in ln)
    assert f"({expected}, {WORKERS} relay workers in {relays})" in line, line
