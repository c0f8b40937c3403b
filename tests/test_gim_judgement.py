"""GIM's stuck-site judgement against a real Info Mart, cycle by cycle.

These drive `Gim._apply` directly, with answers made up, so that the order of events a
freeze produces (a cycle that hears a site but may not judge it, then one that judges
without hearing it) happens every time instead of once in a campaign.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.backends.local import LocalBackend
from testbed.clock import Clock
from testbed.pipeline.gim import Extracted, Gim
from testbed.postgres import Server

THRESHOLD = 1000.0


@pytest.fixture
def infomart(testbed_backend: LocalBackend) -> Server:
    server = testbed_backend.new_server("infomart1").init().start()
    server.create_database("infomart")
    return server


def _gim(infomart: Server, tmp_path: Path) -> Gim:
    config = {
        "name": "gim1",
        "site": "site1",
        "extract_data_stuck_threshold": THRESHOLD,
        "delayed_data_threshold": 900.0,
        "infomart": infomart.address,
        "database": "infomart",
        "status": str(tmp_path / "gim.json"),
        "sources": [
            # Never asked: the tests hand answers to the cycle themselves.
            {
                "name": f"icon1{m}",
                "site": "site1",
                "member": m,
                "address": "127.0.0.1:9",
                "database": f"icon1{m}",
            }
            for m in "ab"
        ],
    }
    gim = Gim(config, Clock.start(factor=3600.0, at=0.0))
    gim.conn = gim._connect()
    return gim


def _answer(source: str, heartbeat: float, read_at: float) -> Extracted:
    return Extracted(
        source,
        new_hwm=1,
        events=[],
        heartbeat=heartbeat,
        read_at=read_at,
        spans=[(0.0, heartbeat)],  # a member that has held every event from the start
    )


def _primed(gim: Gim, since: float) -> None:
    gim.serving_since = since
    for source in gim.sources.values():
        source.answered_at = since


def _stuck(infomart: Server) -> bool:
    return bool(infomart.execute("SELECT stuck FROM gim_site", dbname="infomart")[0][0])


def test_heartbeats_heard_before_priming_count_when_the_site_is_judged(
    infomart: Server, tmp_path: Path
) -> None:
    """A cycle after a gap moves the marks past a site's new heartbeats but may not judge
    yet. The next cycle judges, hearing nothing new (no heartbeat in its short span): the
    site's completeness must be the one those heartbeats gave, or GIM finds it "stuck" on
    what it knew before the gap and discards an hour of its data."""
    gim = _gim(infomart, tmp_path)
    _primed(gim, 0.0)
    gim._apply([_answer("icon1a", 0.0, 0.0), _answer("icon1b", 0.0, 0.0)], now=0.0)
    gim.serving_since = 950.0  # a gap: sources must answer anew before judging
    gim._apply([_answer("icon1a", 900.0, 900.0)], now=960.0)  # heard, not judged
    _primed(gim, 950.0)
    gim._apply([], now=1500.0)  # judged: 600 s since the newest heartbeat, not 1500 s
    assert not _stuck(infomart)
    complete_to = infomart.execute("SELECT complete_to FROM gim_site", dbname="infomart")
    assert complete_to == [(900.0,)]


def test_a_site_silent_past_the_threshold_is_still_judged_stuck(
    infomart: Server, tmp_path: Path
) -> None:
    """The other side of the same judgement, so the test above cannot pass by never
    declaring anything stuck."""
    gim = _gim(infomart, tmp_path)
    _primed(gim, 0.0)
    gim._apply([_answer("icon1a", 0.0, 0.0), _answer("icon1b", 0.0, 0.0)], now=0.0)
    gim._apply([_answer("icon1a", 100.0, 100.0)], now=100.0)
    gim._apply([], now=100.0 + THRESHOLD + 1)
    assert _stuck(infomart)
