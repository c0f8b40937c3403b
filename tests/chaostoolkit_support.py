"""Activities of the tests' own Chaos Toolkit experiments, imported by `chaos run` (the
tests put this folder on its PYTHONPATH): a tampering that no fault explains, and views of
the WAN proxy from our side (its state through our client, traffic through its proxies).
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import Any

from testbed.chaostoolkit.environment import current
from testbed.netfault.client import ToxiproxyClient, ToxiproxyError
from testbed.topology import INFOMART_DATABASE

IO_TIMEOUT_S = 5.0
MESSAGE = b"ping"


def delete_facts(count: int) -> list[str]:
    """Delete the oldest `count` facts behind the testbed's back (a loader bug, as far as
    the verdict can tell); their event ids."""
    run = current()
    server = run.deployment.server(run.pipeline.reporting_infomart)
    rows = server.execute(
        "DELETE FROM fact_interaction WHERE event_id IN"
        " (SELECT event_id FROM fact_interaction ORDER BY ts LIMIT %s) RETURNING event_id",
        (count,),
        dbname=INFOMART_DATABASE,
    )
    return sorted(row[0] for row in rows)


def proxy_state(url: str, name: str) -> dict[str, Any] | None:
    """The proxy as our own client reads it (None when there is no such proxy)."""
    try:
        proxy = ToxiproxyClient(url).proxy(name)
    except ToxiproxyError as exc:
        if exc.status == 404:
            return None
        raise
    return {
        "listen": proxy.listen,
        "upstream": proxy.upstream,
        "enabled": proxy.enabled,
        "toxics": {
            t.name: {"type": t.type, "stream": t.stream, "attributes": t.attributes}
            for t in proxy.toxics
        },
    }


def round_trip_ms(url: str, name: str, times: int = 3) -> float:
    """Median milliseconds for a few bytes to go through the proxy to an echo server and
    back, each on a new connection."""
    port = ToxiproxyClient(url).proxy(name).port
    samples = []
    for _ in range(times):
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as sock:
            sock.sendall(MESSAGE)
            received = b""
            while len(received) < len(MESSAGE):
                chunk = sock.recv(len(MESSAGE) - len(received))
                if not chunk:
                    raise ConnectionError("the proxy closed the connection")
                received += chunk
        samples.append((time.monotonic() - start) * 1000)
    return statistics.median(samples)


def refuses_connections(url: str, name: str) -> bool:
    """Whether the proxy's listen port refuses a connection (a disabled proxy)."""
    port = int(ToxiproxyClient(url).proxy(name).listen.rpartition(":")[2])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as sock:
            sock.sendall(MESSAGE)
            return sock.recv(len(MESSAGE)) == b""
    except ConnectionRefusedError:
        return True
