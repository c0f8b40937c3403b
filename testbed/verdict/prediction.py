"""What the documented rules say a run must lose, computed from the fault history alone.

This model shares no code with GIM on purpose: it reads which faults happened when, and
derives the loss from the rules in the design, so a bug in GIM shows as a mismatch instead
of being predicted by the same bug.

- A site's data flows to GIM while some member of its ICON pair is up, its IDB is up and
  reachable from it, and that IDB is reachable from the active GIM.
- A site with no flow for longer than the stuck threshold, from S until the flow returns at
  H, loses its events in [S, H - threshold); a shorter gap loses nothing.
- Events emitted while both ICONs of the pair are down reach no queue: lost.
- A site lost in a disaster (`fail-site`) loses exactly the events the census taken at the
  moment of failure found in no surviving store (IDB or replicated Info Mart); the rules
  above are not applied to it from the failure on, since it emits nothing after it.
- Which GIM extracts changes with the operator's procedures (activate-gim, switchover);
  while none is in service, data waits: a delay, not a loss. The topology changes too (a
  replacement site): each instant is judged with the topology of that instant.

Every window edge is uncertain by one heartbeat interval plus the failure-detection delay
(the tolerance); events that close to an edge may go either way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from testbed.pipeline.control import source_name
from testbed.topology import Topology, topology_from_dict

Window = tuple[float, float]


@dataclass
class Prediction:
    windows: dict[str, list[Window]]  # per site: events with ts in a window are lost
    tolerance: float
    ambiguous: dict[str, list[Window]] = field(default_factory=dict)  # may go either way
    notes: list[str] = field(default_factory=list)
    censuses: list[dict[str, Any]] = field(default_factory=list)  # taken at each fail-site
    census_lost: set[str] = field(default_factory=set)

    def verdict(self, site: str, ts: float, event_id: str | None = None) -> str:
        """'lost', 'kept' or 'either' for an event of `site` at scenario time `ts`."""
        if event_id is not None and event_id in self.census_lost:
            return "lost"
        tol = self.tolerance
        for start, end in self.windows.get(site, []):
            if start + tol <= ts < end - tol:
                return "lost"
            if start - tol <= ts < end + tol:
                return "either"
        for start, end in self.ambiguous.get(site, []):
            if start - tol <= ts < end + tol:
                return "either"
        return "kept"


class _Timeline:
    """Which links, processes and servers are down, as intervals of scenario time."""

    def __init__(self, topology: Topology, history: list[dict[str, Any]]) -> None:
        self.topology = topology
        self.versions: list[tuple[float, Topology]] = [(float("-inf"), topology)]
        first = next((g for g in topology.gims if g.active), None)
        self.gim_sites: list[tuple[float, str | None]] = [
            (float("-inf"), first.site if first else None)
        ]
        self.failed: dict[str, float] = {}
        self.cuts: list[tuple[frozenset[str], float, float]] = []
        self.down: dict[str, list[Window]] = {}
        self.end = max((e["t"] for e in history), default=0.0)
        open_cuts: dict[frozenset[str], float] = {}
        open_down: dict[str, float] = {}
        for entry in history:
            t = entry["t"]
            if entry["kind"] == "topology-changed":
                self.topology = topology_from_dict(entry["topology"])
                self.versions.append((t, self.topology))
            if entry["kind"] == "dr":
                self._procedure(entry, t, open_down)
            if entry["kind"] == "cleanup-heal":
                for link, start in open_cuts.items():
                    self.cuts.append((link, start, t))
                open_cuts.clear()
            if entry["kind"] != "step":
                continue
            step = entry["step"]
            verb, value, options = step["verb"], step["value"], step["options"]
            if verb == "partition":
                open_cuts.setdefault(frozenset(value), t)
            elif verb == "heal":
                links = list(open_cuts) if value == "all" else [frozenset(value)]
                for link in links:
                    if link in open_cuts:
                        self.cuts.append((link, open_cuts.pop(link), t))
            elif verb in ("kill", "stop", "pause", "start", "resume"):
                for name in self._names(options.get("target", value)):
                    if verb in ("kill", "stop", "pause"):
                        open_down.setdefault(name, t)
                    elif name in open_down:
                        self.down.setdefault(name, []).append((open_down.pop(name), t))
        for link, start in open_cuts.items():
            self.cuts.append((link, start, self.end))
        for name, start in open_down.items():
            self.down.setdefault(name, []).append((start, self.end))

    def _procedure(self, entry: dict[str, Any], t: float, open_down: dict[str, float]) -> None:
        procedure, site = entry["procedure"], entry.get("site")
        if procedure == "fail-site" and site is not None:
            self.failed[site] = t
            for name in self._names(site):
                open_down.setdefault(name, t)
            if self.gim_sites[-1][1] == site:
                self.gim_sites.append((t, None))
        elif procedure in ("activate-gim", "switchover"):
            self.gim_sites.append((t, site))

    def topology_at(self, t: float) -> Topology:
        return next(topo for start, topo in reversed(self.versions) if start <= t)

    def gim_site_at(self, t: float) -> str | None:
        return next(site for start, site in reversed(self.gim_sites) if start <= t)

    def _names(self, target: str) -> list[str]:
        topo = self.topology
        if target not in topo.sites:
            return [target]
        names = [s.name for s in topo.servers_at(target)]
        names += [i.name for i in topo.icons if i.site == target]
        names += [g.name for g in topo.gims if g.site == target]
        return [*names, source_name(target)]

    def is_down(self, name: str, t: float) -> bool:
        return any(a <= t < b for a, b in self.down.get(name, []))

    def linked(self, a: str, b: str, t: float) -> bool:
        return a == b or not any(link == {a, b} and s <= t < e for link, s, e in self.cuts)

    def change_points(self) -> list[float]:
        points = {0.0, self.end}
        for _, s, e in self.cuts:
            points |= {s, e}
        for windows in self.down.values():
            for s, e in windows:
                points |= {s, e}
        points |= {t for t, _ in self.versions[1:]} | {t for t, _ in self.gim_sites[1:]}
        return sorted(points)


def predict(
    topology: Topology, history: list[dict[str, Any]], threshold: float, tolerance: float
) -> Prediction:
    timeline = _Timeline(topology, history)
    points = timeline.change_points()
    windows: dict[str, list[Window]] = {}
    notes: list[str] = []
    for site in timeline.topology.sites:

        def members(t: float, site: str = site) -> tuple:
            pair = next((p for p in timeline.topology_at(t).icon_pairs() if p.site == site), None)
            return (pair.a, pair.b) if pair else ()

        def flows(t: float, site: str = site) -> bool:
            topo = timeline.topology_at(t)
            site_of = {s.name: s.site for s in topo.servers}
            gim_site = timeline.gim_site_at(t)
            for m in members(t, site):
                idb_site = site_of[m.idb]
                if (
                    not timeline.is_down(m.name, t)
                    and not timeline.is_down(m.idb, t)
                    and timeline.linked(m.site, idb_site, t)
                    and (gim_site is None or timeline.linked(gim_site, idb_site, t))
                ):
                    return True
            return False

        def both_down(t: float, site: str = site) -> bool:
            found = members(t, site)
            return bool(found) and all(timeline.is_down(m.name, t) for m in found)

        failed_at = timeline.failed.get(site, float("inf"))
        lost: list[Window] = []
        for start, end in _intervals(points, lambda t, f=flows: not f(t)):
            if start >= failed_at:
                continue  # explained by the census of the failure
            end_cut = min(end, failed_at) if end > failed_at else end
            if end_cut - start > threshold:
                lost.append((start, end_cut - threshold))
                notes.append(
                    f"{site}: no data flow for {end_cut - start:.0f}s from"
                    f" t={start:.0f}s (threshold {threshold:.0f}s): events in"
                    f" [{start:.0f}s, {end_cut - threshold:.0f}s) lost"
                )
        for start, end in _intervals(points, both_down):
            if start >= failed_at:
                continue
            lost.append((start, end))
            notes.append(
                f"{site}: both ICONs down in [{start:.0f}s, {end:.0f}s):"
                " events emitted then reach no queue"
            )
        windows[site] = _merge(lost)
    ambiguous = {
        site: [
            (a - 1.0, b)
            for a, b in timeline.down.get(source_name(site), [])
            if a < timeline.failed.get(site, float("inf"))
        ]
        for site in timeline.topology.sites
    }
    censuses = [e["census"] for e in history if e["kind"] == "dr" and e.get("census")]
    census_lost = {event_id for c in censuses for event_id in c["lost"]}
    for census in censuses:
        notes.append(
            f"{census['site']} failed: of its {census['events']} events,"
            f" {census['in_surviving_idbs']} were in a surviving IDB and"
            f" {census['only_in_surviving_infomart']} only in the surviving Info Mart;"
            f" {len(census['lost'])} were nowhere else: lost"
        )
    return Prediction(windows, tolerance, ambiguous, notes, censuses, census_lost)


def _intervals(points: list[float], condition: Any) -> list[Window]:
    """Maximal intervals between change points where `condition(midpoint)` holds."""
    found: list[Window] = []
    for a, b in itertools.pairwise(points):
        if b > a and condition((a + b) / 2):
            if found and found[-1][1] == a:
                found[-1] = (found[-1][0], b)
            else:
                found.append((a, b))
    return found


def _merge(windows: list[Window]) -> list[Window]:
    merged: list[Window] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
