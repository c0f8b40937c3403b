"""GIM's extractor across a black-holed link that is healed: the return is noticed at once.

A heal closes the connections a black hole held (`timeout` toxic). The cut is news: the
extractor tries again in the same request rather than reporting a failure and waiting for
the next cycle, because at 1h = 1s every 10 ms of wall time is 36 s of the loss window.
"""

from __future__ import annotations

import queue
import time

from testbed.backends.local import LocalBackend
from testbed.pipeline.gim import Extracted, Extractor, Failed, Source


def test_a_connection_cut_by_the_heal_is_retried_in_the_same_request(
    testbed_backend: LocalBackend,
) -> None:
    idb = testbed_backend.new_server("idb2", site="site2").init().start()
    idb.create_database("icon2a")
    proxy = testbed_backend.start_proxy().create_proxy("gim-to-idb2", upstream=idb.address)
    for stream in ("upstream", "downstream"):
        proxy.add_toxic("timeout", stream=stream, name=f"hole-{stream}", timeout=0)
    source = Source("icon2a@idb2", "site2", "a", f"127.0.0.1:{proxy.port}", "icon2a")
    results: queue.Queue[Extracted | Failed] = queue.Queue()
    Extractor(source, results, "gim-test").start()
    source.requests.put(0)
    time.sleep(0.3)  # the connection attempt hangs in the black hole (its timeout is 2 s)
    assert results.empty()
    for stream in ("upstream", "downstream"):
        proxy.remove_toxic(f"hole-{stream}")  # the heal: the held connection is closed
    answer = results.get(timeout=10)
    assert isinstance(answer, Extracted), answer  # no failure reported for the cut
    assert answer.source == source.name
