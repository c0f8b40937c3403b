"""Shared links: one capacity that every connection of every proxy naming it shares.

A `bandwidth` toxic limits its own direction of its own connection, as the reference does.
A real WAN is one pipe: ICON batches, GIM's extraction, streaming replication and a base
backup all cross it together. A `bandwidth` toxic with a `group` (our extension) instead
books its bytes on the link of that name, so whatever the number of connections and
proxies, the link carries at most `rate` KB/s.

Sharing is first come, per piece: each direction books one piece (16 KB at most) at a time
at the end of the link's schedule, then waits for it. Every busy connection therefore gets a
turn in each round, which comes out as a fair share among the connections that have data
to send, and idle connections take nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

BURST_S = 0.05  # an idle link may send this much of its rate at once, not what it saved up


@dataclass
class Link:
    """One direction of a WAN link: when it is free next, and what went through it."""

    name: str
    free_at: float = 0.0  # loop time at which the link is free for the next byte
    rate_kb_s: int = 0  # as the last booking asked: the toxics of one group should agree
    sent_bytes: int = 0

    def book(self, size: int, rate_kb_s: int, now: float) -> float:
        """Reserve the link for `size` bytes; returns the loop time they may leave."""
        start = max(self.free_at, now - BURST_S)
        self.free_at = start + size / (rate_kb_s * 1000.0)
        self.rate_kb_s = rate_kb_s
        return self.free_at

    def cancel(self, release: float, size: int) -> None:
        """Give back the last booking when its piece is planned again (a toxic changed
        while it waited), so the change does not cost the link capacity."""
        if self.free_at == release:
            self.free_at -= size / (self.rate_kb_s * 1000.0)

    def sent(self, size: int) -> None:
        self.sent_bytes += size


class Links:
    """Every shared link one proxy server knows, by name."""

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}

    def get(self, name: str) -> Link:
        link = self._links.get(name)
        if link is None:
            link = self._links[name] = Link(name)
        return link

    def all(self) -> list[Link]:
        return list(self._links.values())

    def idle(self) -> None:
        """Every link free now: its schedule was on another time line (a clock attached)."""
        for link in self._links.values():
            link.free_at = 0.0

    def metrics_lines(self, now: float) -> list[str]:
        lines = [
            "# HELP bc_testbed_link_sent_bytes_total Bytes sent through a shared link.",
            "# TYPE bc_testbed_link_sent_bytes_total counter",
        ]
        lines += [
            f'bc_testbed_link_sent_bytes_total{{link="{link.name}"}} {link.sent_bytes}'
            for link in self.all()
        ]
        lines += [
            "# HELP bc_testbed_link_rate_kilobytes A shared link's capacity (KB/s, 1 KB = 1000 B).",
            "# TYPE bc_testbed_link_rate_kilobytes gauge",
        ]
        lines += [
            f'bc_testbed_link_rate_kilobytes{{link="{link.name}"}} {link.rate_kb_s}'
            for link in self.all()
        ]
        lines += [
            "# HELP bc_testbed_link_backlog_seconds How far ahead a shared link is booked.",
            "# TYPE bc_testbed_link_backlog_seconds gauge",
        ]
        lines += [
            f'bc_testbed_link_backlog_seconds{{link="{link.name}"}} '
            f"{max(0.0, link.free_at - now):.6f}"
            for link in self.all()
        ]
        return lines
