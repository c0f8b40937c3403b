"""The reference model: what the documented rules say a run must lose, computed from the
recorded history alone.

This model shares no code with GIM on purpose: it reads when each fault, restart and
procedure took effect, and derives the loss from the rules in the design, so a bug in GIM
shows as a mismatch instead of being predicted by the same bug.

- A site's data *flows* to a GIM while some member of its ICON pair is up (a frozen member
  is a down member), the member's IDB is up and reachable from it, and that IDB is
  reachable from the GIM's site. Any partition between two sites, both ways or one way,
  in either mode, cuts every connection between them (a TCP connection needs both ways).
- A GIM is *in service* while it is the one loading its Info Mart's lineage, its process
  runs (not killed, stopped or frozen) and its Info Mart server runs. While no GIM is in
  service, data waits: a delay, never a loss.
- A site with no flow from S until H is declared stuck only if a GIM in service sees it lag
  past the threshold: in service at some time in (S + threshold, H). It returns at R, the
  first time from H on that a GIM is in service: its events in [S, R - threshold) are lost.
  Otherwise nothing of that gap is lost. A return restarts the lag (the extraction
  advanced): what it did not bring, an older hole out of GIM's reach, lags from R.
- A site is back the moment a GIM in service can read writes of its members that no GIM
  has read, whatever their age: made while their IDB could not be read, or in flight when
  their IDB froze (the frozen server commits them when it resumes).
- A return's cut judges every copy that reaches GIM only from then on: an event older than
  the cut whose only copies were out of GIM's reach until the return is lost, wherever it
  lies (its partner missed it, and the one copy waited in an IDB GIM could not read).
- Events emitted while both ICONs of the pair are down reach no queue: lost.
- A site lost in a disaster (`fail-site`) loses exactly the events the census taken at the
  moment of failure found in no surviving store (IDB or replicated Info Mart); the rules
  above are not applied to it from the failure on, since it emits nothing after it.
- Which GIM loads an Info Mart's lineage changes with the operator's procedures
  (activate-gim, switchover); the topology changes too (a replacement site): each instant
  is judged with the topology and the GIM of that instant. A GIM going on from a promoted
  Info Mart knows only what replication carried: its predecessor's service after
  replication to that standby stopped is, for the lineage, no service at all. In
  active-active each GIM judges stuck sites on its own: each Info Mart has its own
  prediction.

Every edge is uncertain by the tolerance (`tolerance.py`); events that close to an edge may
go either way, and a gap whose being stuck depends on less than the tolerance is ambiguous
as a whole. A return is noticed through a new connection, late but never early: the end
of a loss window is uncertain on its late side by `reconnect` (and over a slow WAN by the
round trips of that extraction) as well.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.topology import GimSpec, Topology, source_name, topology_from_dict

Window = tuple[float, float]
Band = tuple[float, float, str]  # a span whose events may go either way, and why
INF = float("inf")

# Why events may go either way: the bands a report names with their share of a site's
# events (`report.json`: `either_bands`).
EDGE = "edge tolerance"  # a window's edges, the tolerance either side
SLOW_WAN = "slow WAN (data in flight when the flow stopped)"
LATE_RETURN = "return noticed late (reconnection, heal spread)"
PRIMING = "GIM priming (a GIM back in service hears every source anew)"
STUCK_EDGE = "stuck or not, within the tolerance"
CUT_SPREAD = "partition spread (routes cut one after the other)"
FROZEN_OR_STOPPING = "frozen ICON's acknowledgement wait, or a graceful stop"
CONGESTION = "congested link"
SOURCE_DOWN = "data source down"


@dataclass
class Prediction:
    windows: dict[str, list[Window]]  # per site: events with ts in a window are lost
    tolerance: float
    ambiguous: dict[str, list[Window]] = field(default_factory=dict)  # may go either way
    notes: list[str] = field(default_factory=list)
    censuses: list[dict[str, Any]] = field(default_factory=list)  # taken at each fail-site
    census_lost: set[str] = field(default_factory=set)
    infomart: str | None = None  # the Info Mart this prediction is for
    # Per failed site: spans in which a healthy partner wrote to a surviving IDB; its
    # events there must survive the disaster, whatever the census says (the census's bound).
    must_keep: dict[str, list[Window]] = field(default_factory=dict)
    bands: dict[str, list[Band]] = field(default_factory=dict)  # `ambiguous`, with why
    # Events a census counted lost that a recovered site's old disks still held: they come
    # back (`recovered`), or may (`recovered_either`: a stuck judgement within the tolerance).
    recovered: set[str] = field(default_factory=set)
    recovered_either: set[str] = field(default_factory=set)

    def verdict(self, site: str, ts: float, event_id: str | None = None) -> str:
        """'lost', 'kept' or 'either' for an event of `site` at scenario time `ts`."""
        if event_id is not None and event_id in self.recovered | self.recovered_either:
            # What a recovered site's old disks held comes back, but for what a return
            # had judged lost before the failure: the lineage knew that already (the
            # windows before a failure are judgements made before it), and a recovery
            # undoes no judgement.
            judged = self._by_the_rules(site, ts)
            if judged != "kept":
                return judged
            return "kept" if event_id in self.recovered else "either"
        if event_id is not None and event_id in self.census_lost:
            return "lost"
        return self._by_the_rules(site, ts)

    def _by_the_rules(self, site: str, ts: float) -> str:
        """The verdict of the windows and bands alone (no census, no recovery)."""
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

    def why_either(self, site: str, ts: float) -> set[str]:
        """The bands that make an event at `ts` go either way (empty when it does not)."""
        tol = self.tolerance
        why = {
            EDGE
            for start, end in self.windows.get(site, [])
            if start - tol <= ts < start + tol or end - tol <= ts < end + tol
        }
        why |= {name for a, b, name in self.bands.get(site, []) if a - tol <= ts < b + tol}
        return why


class _Timeline:
    """Which links, processes and servers are down, as intervals of scenario time, and
    which GIM loads each Info Mart lineage when."""

    def __init__(self, topology: Topology, history: list[dict[str, Any]]) -> None:
        self.topology = topology
        self.versions: list[tuple[float, Topology]] = [(-INF, topology)]
        self.mode = topology.mode
        # Per lineage (active-standby: one; active-active: one per GIM), the GIM loading it.
        self.chains: dict[str, list[tuple[float, str | None]]] = {}
        active = [g for g in topology.gims if g.active]
        if self.mode == "active-active":
            self.chains = {g.name: [(-INF, g.name)] for g in active}
        else:
            self.chains = {"reporting": [(-INF, active[0].name if active else None)]}
        self.failed: dict[str, float] = {}
        self.failing: dict[str, float] = {}
        # Per site: (lost at, recovered at; INF: never) of each disaster. While retired, a
        # site is judged by the census of its failure; once recovered, by the rules again.
        self.retired_spans: dict[str, list[Window]] = {}
        # (site, recovered at, census-lost events its old disks held then) per recovery
        self.recoveries: list[tuple[str, float, list[str]]] = []
        self.frozen: list[tuple[str, float]] = []  # (name, when) of each pause
        # (name, began, done) of each stop: a graceful stop lets its process work on (an
        # ICON acknowledges and queues what arrives) until it exits, before the step is done
        self.stopping: list[tuple[str, float, float]] = []
        self.cuts: list[tuple[frozenset[str], float, float]] = []
        # (link, start) of each cut -> whether it black-holes (connections hang until their
        # deadline) rather than refusing (they fail at once).
        self.blackholes: set[tuple[frozenset[str], float]] = set()
        # A heal's step-done time -> its step's beginning. The step heals a link's proxies
        # one after the other, and each route is back as soon as its own proxy is: a site's
        # return may take effect any time in between (a start is done once the process
        # answers, a resume at once: only heals spread).
        self.healing: dict[float, float] = {}
        # Likewise a partition's step beginning -> its end: each route is cut in turn.
        self.cutting: dict[float, float] = {}
        # (promoted at, its former primary, the promoted standby) of each promotion, and
        # what of the lineage's service before it never reached the standby (see below).
        self.promotions: list[tuple[float, str, str]] = []
        self.unreplicated: list[Window] = []
        began: dict[str, float] = {}
        self.down: dict[str, list[Window]] = {}
        self.end = max((e["t"] for e in history), default=0.0)
        open_cuts: dict[frozenset[str], float] = {}
        open_down: dict[str, float] = {}
        # A fault takes effect when its step begins; a heal, start or resume once its step
        # is done (a restarted process reports first, every proxy of a link is healed).
        done = any(e["kind"] == "step-done" for e in history)
        for entry in history:
            t = entry["t"]
            kind = entry["kind"]
            if kind == "topology-changed":
                self.topology = topology_from_dict(entry["topology"])
                self.versions.append((t, self.topology))
            elif kind == "dr":
                self._procedure(entry, t, open_down)
            elif kind == "cleanup-heal":
                for link, start in open_cuts.items():
                    self.cuts.append((link, start, t))
                open_cuts.clear()
            elif kind == "cleanup-resume":
                for name in entry.get("names", []):
                    if name in open_down:
                        self.down.setdefault(name, []).append((open_down.pop(name), t))
            if kind not in ("step", "step-done"):
                continue
            step = entry["step"]
            if step["verb"] in ("heal", "partition"):
                key = f"{step['verb']} {step['value']!r}"
                if kind == "step":
                    began[key] = t
                elif key in began and step["verb"] == "heal":
                    self.healing[t] = began.pop(key)
                elif key in began:
                    self.cutting[began.pop(key)] = t
            if kind == "step" and step["verb"] == "fail-site":
                self.failing[step["value"]] = t  # a disaster strikes when its step begins
            verb, value, options = step["verb"], step["value"], step["options"]
            restoring = verb in ("heal", "start", "resume")
            if done and kind == "step-done" and verb == "stop":
                for name in self._names(options.get("target", value)):
                    if name in open_down:
                        self.stopping.append((name, open_down[name], t))
            if done and (kind == "step-done") != restoring:
                continue
            if verb == "partition":
                link = frozenset(value)
                if link not in open_cuts:
                    open_cuts[link] = t
                    if options.get("mode", "reset") == "blackhole":
                        self.blackholes.add((link, t))
            elif verb == "heal":
                links = list(open_cuts) if value == "all" else [frozenset(value)]
                for link in links:
                    if link in open_cuts:
                        self.cuts.append((link, open_cuts.pop(link), t))
            elif verb in ("kill", "stop", "pause", "start", "resume"):
                for name in self._names(options.get("target", value)):
                    if verb == "pause" and name not in open_down:
                        self.frozen.append((name, t))
                    if verb in ("kill", "stop", "pause"):
                        open_down.setdefault(name, t)
                    elif name in open_down:
                        self.down.setdefault(name, []).append((open_down.pop(name), t))
        for link, start in open_cuts.items():
            self.cuts.append((link, start, self.end))
        for name, start in open_down.items():
            self.down.setdefault(name, []).append((start, self.end))
        self.unreplicated = [span for p in self.promotions if (span := self._unreplicated(*p))]

    def _procedure(self, entry: dict[str, Any], t: float, open_down: dict[str, float]) -> None:
        procedure, site = entry["procedure"], entry.get("site")
        if site is None:
            return
        gim_there = next((g.name for g in self.topology.gims if g.site == site), None)
        if procedure == "fail-site":
            t = self.failing.get(site, t)
            self.failed[site] = t
            self.retired_spans.setdefault(site, []).append((t, INF))
            for name in self._names(site):
                open_down.setdefault(name, t)
        elif procedure == "recover-site":
            spans = self.retired_spans.get(site, [])
            if spans and spans[-1][1] == INF:
                spans[-1] = (spans[-1][0], t)
            held = (entry.get("held") or {}).get("events", [])
            self.recoveries.append((site, t, list(held)))
            # Its servers, ICONs and data source run again; its GIM waits for the operator.
            gims = {g.name for g in self.topology.gims if g.site == site}
            for name in self._names(site):
                if name in open_down and name not in gims:
                    self.down.setdefault(name, []).append((open_down.pop(name), t))
            for chain in self.chains.values():
                current = chain[-1][1]
                if current is not None and self._gim(current).site == site:
                    chain.append((t, None))
        elif procedure == "promote" and entry.get("former_primary") and entry.get("server"):
            self.promotions.append((t, str(entry["former_primary"]), str(entry["server"])))
        elif procedure in ("activate-gim", "switchover") and gim_there is not None:
            if self.mode == "active-active":
                self.chains.setdefault(gim_there, []).append((t, gim_there))
            else:
                self.chains["reporting"].append((t, gim_there))

    def _gim(self, name: str) -> GimSpec:
        return next(g for _, topo in reversed(self.versions) for g in topo.gims if g.name == name)

    def topology_at(self, t: float) -> Topology:
        return next(topo for start, topo in reversed(self.versions) if start <= t)

    def gim_at(self, chain: str, t: float) -> str | None:
        return next(gim for start, gim in reversed(self.chains[chain]) if start <= t)

    def _names(self, target: str) -> list[str]:
        topo = self.topology
        if target not in topo.sites:
            return [target]
        names = [s.name for s in topo.servers_at(target)]
        names += [i.name for i in topo.icons if i.site == target]
        names += [g.name for g in topo.gims if g.site == target]
        return [*names, source_name(target)]

    def retired(self, site: str, t: float) -> bool:
        """Lost in a disaster at `t` and not recovered yet: the census judges it."""
        return any(a <= t < b for a, b in self.retired_spans.get(site, []))

    def judged_pieces(self, site: str, start: float, end: float) -> list[Window]:
        """The parts of a gap the rules judge: before each loss of the site, and from each
        recovery on (a recovered site is waited for again from then: its lag too)."""
        pieces, begin = [], start
        for lost, back in sorted(self.retired_spans.get(site, [])):
            if back <= begin or lost >= end:
                continue
            if lost > begin:
                pieces.append((begin, lost))
            begin = max(begin, back)
        if begin < end:
            pieces.append((begin, end))
        return pieces

    def is_down(self, name: str, t: float) -> bool:
        return any(a <= t < b for a, b in self.down.get(name, []))

    def linked(self, a: str, b: str, t: float) -> bool:
        return a == b or not any(link == {a, b} and s <= t < e for link, s, e in self.cuts)

    def hangs(self, a: str, b: str, t: float) -> float | None:
        """When a connection from site `a` to site `b` at `t` stops hanging (a black hole
        between them healed), or None if it does not hang: it works, or fails at once."""
        return next(
            (
                e
                for link, s, e in self.cuts
                if link == {a, b} and s <= t < e and (link, s) in self.blackholes
            ),
            None,
        )

    def _unreplicated(self, promoted: float, primary: str, standby: str) -> Window | None:
        """What the lineage's GIM did on the former primary after replication to the
        promoted standby stopped (a cut between their sites, open when the primary went
        down): the promoted Info Mart never received it, so the GIM that continues from
        it (DESIGN.md: "from the replicated state") knows nothing of it. For the lineage
        that span is as if no GIM had been in service: a delay, its judgements undone."""
        died = next((a for a, b in self.down.get(primary, []) if a <= promoted < b), None)
        if died is None:
            return None
        site_of = {s.name: s.site for _, topo in self.versions for s in topo.servers}
        link = frozenset((site_of.get(primary), site_of.get(standby)))
        cut = next((a for k, a, b in self.cuts if k == link and a < died <= b), None)
        return (cut, died) if cut is not None else None

    def in_service(self, chain: str, t: float) -> bool:
        """A GIM loads this lineage at `t`: it is the chain's GIM, running, and so is its
        Info Mart server; and what it does then reaches the lineage's later Info Marts
        (not lost with a primary that replication had stopped reaching)."""
        if chain == "reporting" and any(a <= t < b for a, b in self.unreplicated):
            return False
        name = self.gim_at(chain, t)
        if name is None or self.is_down(name, t):
            return False
        gim = next((g for g in self.topology_at(t).gims if g.name == name), None)
        return gim is not None and not self.is_down(gim.infomart, t)

    def change_points(self) -> list[float]:
        points = {0.0, self.end}
        for _, s, e in self.cuts:
            points |= {s, e}
        for windows in self.down.values():
            for s, e in windows:
                points |= {s, e}
        points |= {t for t, _ in self.versions[1:]}
        for chain in self.chains.values():
            points |= {t for t, _ in chain[1:]}
        for s, e in self.unreplicated:
            points |= {s, e}
        return sorted(p for p in points if p > -INF)


def predict(
    topology: Topology,
    history: list[dict[str, Any]],
    threshold: float,
    tolerance: float,
    **margins: Any,
) -> Prediction:
    """The prediction of the first lineage (`predict_all` says what `margins` are)."""
    return next(iter(predict_all(topology, history, threshold, tolerance, **margins).values()))


def predict_all(
    topology: Topology,
    history: list[dict[str, Any]],
    threshold: float,
    tolerance: float,
    priming: float = 0.0,
    rtt: float | Callable[[float], float] = 0.0,
    ack_grace: float = 0.0,
    reconnect: float = 0.0,
    congested: list[tuple[frozenset[str], float, float, str]] | None = None,
    cycle: float = 0.0,
) -> dict[str, Prediction]:
    """One prediction per lineage: 'reporting' in active-standby, per GIM in active-active
    (keyed by the GIM's name). Margins, in scenario seconds: `priming`, what a GIM back in
    service takes to hear every source anew; `rtt`, the WAN round trip (a figure, or the
    one in force at each instant: `latency.round_trip_at`); `ack_grace`,
    a data source's wait on a frozen ICON; `reconnect`, how late GIM may notice a return (a
    new connection to the returned site's IDB); `cycle`, on virtual time, the heartbeat a
    write still crossing a slow WAN waits for GIM's next cycle."""
    timeline = _Timeline(topology, history)
    censuses = [e["census"] for e in history if e["kind"] == "dr" and e.get("census")]
    census_lost = {event_id for c in censuses for event_id in c["lost"]}
    predictions = {}
    for chain in timeline.chains:
        prediction = _predict_chain(
            timeline,
            chain,
            threshold,
            tolerance,
            priming,
            rtt,
            ack_grace,
            censuses,
            census_lost,
            reconnect,
            congested or [],
            cycle,
        )
        last = next((g for _, g in reversed(timeline.chains[chain]) if g is not None), None)
        prediction.infomart = timeline._gim(last).infomart if last else None
        predictions[chain] = prediction
    return predictions


def _predict_chain(
    timeline: _Timeline,
    chain: str,
    threshold: float,
    tol: float,
    priming: float,
    rtt: float | Callable[[float], float],
    ack_grace: float,
    censuses: list[dict[str, Any]],
    census_lost: set[str],
    reconnect: float = 0.0,
    congested: list[tuple[frozenset[str], float, float, str]] | None = None,
    cycle: float = 0.0,
) -> Prediction:
    points = timeline.change_points()
    recovered: set[str] = set()
    recovered_either: set[str] = set()
    windows: dict[str, list[Window]] = {}
    ambiguous: dict[str, list[Window]] = {}
    bands: dict[str, list[Band]] = {}
    notes: list[str] = []
    last_gim_site: dict[float, str | None] = {}

    def gim_site(t: float) -> str | None:
        """The site of the chain's GIM at `t`, or of the last one it had (data waiting for
        a GIM to come back waits at the same place)."""
        if t not in last_gim_site:
            names = [g for start, g in timeline.chains[chain] if start <= t and g is not None]
            name = names[-1] if names else None
            last_gim_site[t] = timeline._gim(name).site if name else None
        return last_gim_site[t]

    def serving(t: float) -> bool:
        return timeline.in_service(chain, t)

    def rtt_at(t: float) -> float:
        return rtt(t) if callable(rtt) else rtt

    def priming_at(t: float) -> float:
        """How long a GIM that comes into service at `t` takes to hear every source anew:
        a moment, but for a source whose connection hangs (behind a black hole, or its IDB
        frozen), which answers only when its deadlines pass (`priming`) or the hang ends."""
        where = gim_site(t)
        topo = timeline.topology_at(t)
        ends = []
        for server in topo.servers:
            if server.role != "idb":
                continue
            if where is None:
                continue
            healed = timeline.hangs(where, server.site, t)
            if healed is not None:
                ends.append(healed)
            elif timeline.linked(where, server.site, t):  # else refused: fails at once
                ends += [b for name, a, b in thaws if name == server.name and a <= t < b]
        return min(priming, max(ends) - t) if ends else 0.0

    # (name, paused at, resumed at) of every freeze
    thaws = [
        (name, a, next((e for s, e in timeline.down.get(name, []) if s == a), timeline.end))
        for name, a in timeline.frozen
    ]

    for site in timeline.topology.sites:

        def members(t: float, site: str = site) -> tuple:
            pair = next((p for p in timeline.topology_at(t).icon_pairs() if p.site == site), None)
            return (pair.a, pair.b) if pair else ()

        def flows(t: float, site: str = site) -> bool:
            found = members(t, site)
            if not found:
                return True  # no ICONs there (yet): no data to wait for, nothing judged
            # Completeness moves only while a GIM reads; back, it reads what waited in the
            # IDBs it can reach (the backlog of `completeness`).
            return any(flows_through(m, t) for m in found)

        def flows_through(m: Any, t: float) -> bool:
            """Member `m` writes to its IDB at `t`, and a GIM in service reads that IDB."""
            site_of = {s.name: s.site for s in timeline.topology_at(t).servers}
            return (
                not timeline.is_down(m.name, t)
                and not timeline.is_down(m.idb, t)
                and timeline.linked(m.site, site_of[m.idb], t)
                and readable(t, m.idb)
            )

        source_downs = timeline.down.get(source_name(site), [])
        miss_cache: dict[str, list[Window]] = {}

        def misses(
            name: str,
            miss_cache: dict[str, list[Window]] = miss_cache,
            source_downs: list[Window] = source_downs,
        ) -> list[Window]:
            """The spans in which member `name` missed calls its data source emitted: down
            (a freeze only past the source's acknowledgement wait) while the source ran,
            each up to where the member vouches again (its return, or its source's)."""
            if name not in miss_cache:
                paused = {a for n, a in timeline.frozen if n == name}
                found = []
                for a, b in timeline.down.get(name, []):
                    if a in paused and b - a <= ack_grace:
                        continue  # answered within the source's wait: it missed nothing
                    if any(sa <= a and b <= sb for sa, sb in source_downs):
                        continue  # its source emitted nothing meanwhile
                    back = next((sb for sa, sb in source_downs if sa <= b < sb), b)
                    found.append((a, back))
                miss_cache[name] = found
            return miss_cache[name]

        def vouches_from(name: str, t: float, source_downs: list[Window] = source_downs) -> float:
            """Since when member `name`'s heartbeats at `t` say it holds every event of its
            site: the end of its latest miss (DESIGN.md section 1); with its source down,
            no session is open and it vouches for the instant only."""
            if any(a <= t < b for a, b in source_downs):
                return t
            return max((back for _, back in misses(name) if back <= t), default=-INF)

        def vouched_to(
            name: str,
            complete: float,
            first: float,
            newest: float,
            source_downs: list[Window] = source_downs,
        ) -> float:
            """How far a backlog of member `name` (written from `first` to `newest`) brings
            a completeness at `complete`: if the member held everything since, up to its
            newest write, but no further than where it began to miss or where its data
            source stopped for good (its heartbeats then vouch for their instant only)."""
            if vouches_from(name, first) > complete:
                return complete
            # A miss under way at `complete` (begun before it) holds nothing after it either.
            breaks = [max(a, complete) for a, b in misses(name) if b > complete]
            breaks += [a for a, b in source_downs if a >= complete and b > newest]
            return min([newest, *breaks])

        def backlog_from(m: Any, t: float) -> float:
            """Where member `m`'s data unread at `t` begins: the oldest of what waits in
            its queue (its IDB down or cut off from it; a stop or crash since keeps the
            queue on disk) and what it wrote to an IDB out of GIM's reach. GIM reads what
            waits in an IDB as soon as it can read that IDB, whether the member still runs
            or not; what waits in the queue only once the member writes it out."""
            queued: float | None = None  # the oldest write still in the member's queue
            stored: float | None = None  # the oldest write waiting unread in its IDB
            for a, b in itertools.pairwise([*(p for p in points if p < t), t]):
                if b <= a:
                    continue
                mid = (a + b) / 2
                up = not timeline.is_down(m.name, mid)
                writing = up and (m.name, m.idb) in writes(mid)
                if readable(mid, m.idb):
                    stored = None
                    if writing:
                        queued = None
                elif writing:
                    stored = min(x for x in (stored, queued, a) if x is not None)
                    queued = None
                if up and not writing and queued is None:
                    queued = a
            starts = [x for x in (queued, stored) if x is not None]
            return min(starts) if starts else t

        def written(a: float, b: float, site: str = site) -> Unread:
            """The writes of [a, b) per (ICON, IDB), each from the oldest data it carries:
            a member that reaches its IDB again first writes out what its queue held, whose
            heartbeats vouch as they did when they were queued."""
            mid = (a + b) / 2
            now = writes(mid, site)
            return {
                (m.name, m.idb): (min(a, backlog_from(m, a)), b)
                for m in members(mid, site)
                if (m.name, m.idb) in now
            }

        def arrive(pending: Unread, t: float, complete: float) -> tuple[float, bool]:
            """Backlogs that became readable at `t` (taken out of `pending`): the
            completeness they bring, and whether one of them brings the site back (rows of
            a member that held everything since, whatever their age, or a completeness
            moved on)."""
            back = False
            for pair in [k for k in pending if readable(t, k[1])]:
                first, newest = pending.pop(pair)
                brought = vouched_to(pair[0], complete, first, newest)
                back = back or brought > complete or vouches_from(pair[0], first) <= complete
                complete = max(complete, brought)
            return complete, back

        def gaps(site: str = site) -> list[Window]:
            """The spans in which the site's completeness stays behind: from where the flow
            stopped until a member that held everything since (or every member, each heard
            vouching from later on only: none holds what lies between) flows again."""
            found: list[Window] = []
            start: float | None = None
            complete = -INF
            heard: set[str] = set()
            pending: Unread = {}
            for a, b in itertools.pairwise(points):
                if b <= a:
                    continue
                mid = (a + b) / 2
                if start is None:
                    if not flows(mid):
                        start, complete, heard, pending = a, a, set(), unread(a)
                    continue
                _add_unread(pending, in_flight_at_freeze(a))
                complete, _ = arrive(pending, mid, complete)
                _add_unread(pending, written(a, b))
                now = members(mid, site)
                if not now:
                    found.append((start, a))
                    start = None
                    continue
                if not serving(mid):
                    continue
                flowing = [m for m in now if flows_through(m, mid)]
                heard |= {m.name for m in flowing if vouches_from(m.name, mid) > complete}
                # What GIM reads first of a member is its oldest unread data: its queue's
                # heartbeats vouch as they did when they were queued.
                backlogs = {m.name: backlog_from(m, a) for m in flowing}
                counts = [vouches_from(m.name, backlogs[m.name]) <= complete for m in flowing]
                if any(counts) or all(m.name in heard for m in now):
                    found.append((start, a))
                    start = None
                    if all(m.name in heard for m in now):
                        continue
                    # A backlog whose member began to miss before GIM could read it brings
                    # the completeness only up to that miss; unless a member vouches from
                    # at or before there now, the site lags again from there.
                    brought = max(
                        vouched_to(m.name, complete, backlogs[m.name], a)
                        for m, whole in zip(flowing, counts, strict=True)
                        if whole
                    )
                    if brought < a and all(vouches_from(m.name, mid) > brought for m in flowing):
                        start, complete, heard = brought, brought, set()
                        pending = unread(brought)
            if start is not None:
                found.append((start, points[-1]))
            return found

        def both_down(t: float, site: str = site) -> bool:
            found = members(t, site)
            return bool(found) and all(timeline.is_down(m.name, t) for m in found)

        def both_surely_down(t: float, site: str = site) -> bool:
            """A frozen ICON still has its data source's acknowledgement wait to time out
            (`ack_grace`) before the source stops sending to it; and what the source
            queues while its last probe waits on the frozen ICON is delivered if the ICON
            wakes within that wait. A source (re)started while the ICON is frozen waits
            on its first batch the same way: that batch sits in the frozen ICON's socket."""
            found = members(t, site)
            return (
                both_down(t, site)
                and not any(
                    name == m.name
                    and (
                        a <= t < a + ack_grace
                        or b - ack_grace <= t < b
                        or any(a <= r < b and r <= t < r + ack_grace for r in restarts(site))
                    )
                    for m in found
                    for name, a, b in thaws
                )
                and not any(
                    name == m.name and a <= t < b for m in found for name, a, b in timeline.stopping
                )
            )

        def restarts(site: str = site) -> list[float]:
            return [b for _, b in timeline.down.get(source_name(site), [])]

        def writes(t: float, site: str = site) -> list[tuple[str, str]]:
            """The (ICON, IDB) pairs whose member is putting data in that IDB at `t`."""
            topo = timeline.topology_at(t)
            site_of = {s.name: s.site for s in topo.servers}
            return [
                (m.name, m.idb)
                for m in members(t, site)
                if not timeline.is_down(m.name, t)
                and not timeline.is_down(m.idb, t)
                and timeline.linked(m.site, site_of[m.idb], t)
            ]

        def readable(t: float, idb: str) -> bool:
            topo = timeline.topology_at(t)
            idb_site = next((s.site for s in topo.servers if s.name == idb), None)
            where = gim_site(t)
            return (
                idb_site is not None
                and serving(t)
                and not timeline.is_down(idb, t)
                and (where is None or timeline.linked(where, idb_site, t))
            )

        def in_flight_at_freeze(t: float) -> Unread:
            """The writes in flight to an IDB that froze at `t`: (ICON, IDB) -> (t, t)."""
            return {
                pair: (t, t)
                for name, paused, resumed in thaws
                if t == paused < resumed
                for pair in writes(paused - 1e-6)
                if pair[1] == name
            }

        def unread(start: float, site: str = site) -> Unread:
            """Writes of the site's members that no GIM had read by `start`, per (ICON,
            IDB): the oldest and the newest time each put data there. A write lands unread
            while its IDB
            cannot be read (behind a cut, or no GIM in service), and a write in flight when
            its IDB froze lands when the server resumes: the statement waits in the frozen
            server's socket, and it runs and commits then, though its ICON gave up on it."""
            pending: Unread = {}
            before = [p for p in points if p < start]
            for a, b in itertools.pairwise([*before, start]):
                mid = (a + b) / 2
                _add_unread(pending, in_flight_at_freeze(a))
                for pair in [k for k in pending if readable(mid, k[1])]:
                    del pending[pair]
                _add_unread(
                    pending,
                    {pair: w for pair, w in written(a, b).items() if not readable(mid, pair[1])},
                )
            return pending

        def completeness(start: float, end: float) -> list[tuple[float, float, float]]:
            """A gap in the flow as spans (from, to, complete-to). The completeness is the
            gap's start, until an IDB holding writes no GIM has read (made while it could
            not be read, or in flight when it froze) becomes readable: the site is back
            then, whatever the age of what arrives (the reconnection time of the rule), and
            what arrives brings the completeness up to its newest write."""
            spans = []
            since, complete = start, start
            pending = unread(start)
            inside = [p for p in points if start < p < end]
            for a, b in itertools.pairwise([start, *inside, end]):
                mid = (a + b) / 2
                _add_unread(pending, in_flight_at_freeze(a))
                brought, back = arrive(pending, mid, complete)
                if back:
                    if a > since:
                        spans.append((since, a, complete))
                        since = a
                    complete = brought
                _add_unread(pending, written(a, b))
            spans.append((since, end, complete))
            return spans

        def delivered(a: float, b: float) -> float | None:
            """When GIM first can read a copy of an event emitted in [a, b): None if at
            once (a member up then writes it to an IDB GIM reads), else the first time a
            member's copy (queued on its disk until its IDB takes it) can be read; INF if
            no member took it."""
            mid = (a + b) / 2
            taking = [m for m in members(mid) if not timeline.is_down(m.name, mid)]
            now = writes(mid)
            if any((m.name, m.idb) in now and readable(mid, m.idb) for m in taking):
                return None
            later = points[bisect.bisect_left(points, b) :]
            first = INF
            for m in taking:
                pair = (m.name, m.idb)
                written = (
                    b if pair in now else next((p for p in later if pair in writes(p + 1e-6)), INF)
                )
                if written == INF:
                    continue
                if readable(written + 1e-6, m.idb):
                    first = min(first, written)
                    continue
                read = next((p for p in later if p >= written and readable(p + 1e-6, m.idb)), INF)
                first = min(first, read)
            return first

        lost: list[Window] = []
        unsure: list[Band] = []  # what may go either way, and why
        # (back at, the gap's completeness, its cut at the earliest and at the latest, and
        # whether surely stuck) of every return from stuck
        returns: list[tuple[float, float, float, float, bool]] = []
        segments = _segments(points, serving)
        # What of each gap the rules judge: a lost site's events are the census's from its
        # loss until its recovery (if any); from then on it is waited for anew.
        pieces = [piece for gap in gaps() for piece in timeline.judged_pieces(site, *gap)]
        # Each span of a gap with its completeness, in the order their lag is judged (by
        # its end): a return comes at or after the end of the span it ends, so every
        # return that may restart a span's lag is known when that span is judged, even one
        # of an earlier gap (a return that brought the site only up to an older hole).
        # Over a slow WAN, an ICON's commit and GIM's extraction each take a few round
        # trips: what GIM had read when the flow stopped may be that much older.
        spans = sorted(
            (until, since, complete, slow)
            for start, end_cut in pieces
            for slow in [_in_flight(rtt_at(start), cycle)]
            if end_cut - start + slow > threshold - tol
            for since, until, complete in completeness(start, end_cut)
        )
        # Every return from stuck (when, and whether surely) restarts the lag of what is
        # still missing from then: the extraction advanced. After a return that only may
        # have happened, the lag may run from either time: sure needs the later, maybe the
        # earlier.
        backs: list[tuple[float, bool]] = []
        for until, since, complete, slow in spans:
            earlier = [(r, surely) for r, surely in backs if r < until]
            lag_sure = max([complete, *(r for r, _ in earlier)])
            lag_from = max([complete, *(r for r, surely in earlier if surely)])
            if until - lag_from + slow <= threshold - tol:
                continue
            sure = _stuck_at(
                segments, lag_sure, threshold + tol, until - tol, tol, priming_at, since
            )
            # The flow may come back up to the tolerance late, so a GIM in service just
            # after the gap may still see the lag first; not a GIM that came into service
            # as the gap ended: it hears every source anew before it judges a site.
            late = 0.0 if any(a == until for a, _ in segments) else tol
            maybe = _stuck_at(
                segments,
                lag_from - slow,
                threshold - tol,
                until + late,
                0.0,
                _no_wait,
                since - tol,
            )
            if maybe is None:
                if until - lag_from > threshold:
                    notes.append(
                        f"{site}: no new data for {until - lag_from:.0f}s from"
                        f" t={lag_from:.0f}s, but no GIM in service saw it lag past the"
                        " threshold: a delay"
                    )
                continue
            back = next((max(a, until) for a, b in segments if b > until), None)
            returned = back if back is not None else timeline.end
            backs.append((returned, sure is not None))
            cut = returned - threshold
            slow_back = IN_FLIGHT_TRIPS * rtt_at(returned)  # the extraction bringing it
            # A heal step that took long may have brought GIM's route back before it
            # was done: the cut may then come that much early.
            early = returned - timeline.healing.get(returned, returned)
            returns.append(
                (returned, complete, cut - early, cut + reconnect + slow_back, sure is not None)
            )
            if cut + reconnect + slow_back + tol <= complete - slow:
                continue
            if slow:
                unsure.append((complete - slow, min(complete, cut), SLOW_WAN))
            # GIM notices the return through a new connection and a snapshot, which may
            # come late but never before the route is back (by a reconnection, and over
            # a slow WAN by the round trips they take): the cut may pass the predicted
            # one by that much.
            unsure.append(
                (
                    max(cut - early, complete),
                    max(cut + reconnect + slow_back, complete),
                    LATE_RETURN,
                )
            )
            if cut - early <= complete:
                # The return is noticed up to the tolerance late: its cut may still pass
                # the gap's start by that much (the verdict widens this by the tolerance).
                continue
            cut -= early  # what is surely lost ends where the earliest return cuts
            if sure is None:
                # Surely stuck but for a GIM back in service hearing its sources anew,
                # or stuck only within the tolerance.
                primed = _stuck_at(
                    segments, lag_sure, threshold + tol, until - tol, tol, _no_wait, since
                )
                unsure.append((complete, cut, PRIMING if primed is not None else STUCK_EDGE))
                notes.append(
                    f"{site}: no new data for {until - lag_from:.0f}s from"
                    f" t={lag_from:.0f}s; whether a GIM in service saw it stuck is within"
                    f" the tolerance: events in [{complete:.0f}s, {cut:.0f}s) may go"
                    " either way"
                )
                continue
            # A partition step that took long may have left GIM's route (or an ICON's)
            # up until it was done: what is surely lost starts there.
            spread = timeline.cutting.get(complete, complete) - complete
            if spread > 0:
                unsure.append((complete, min(complete + spread, cut), CUT_SPREAD))
                if complete + spread >= cut:
                    continue
            lost.append((complete + spread, cut))
            notes.append(
                f"{site}: no new data for {until - lag_from:.0f}s from t={lag_from:.0f}s"
                f" (threshold {threshold:.0f}s), stuck, back at t={returned:.0f}s: events"
                f" in [{complete:.0f}s, {cut:.0f}s) lost"
            )
        graced = sorted(
            {
                *points,
                *(a + ack_grace for _, a, _ in thaws),
                *(b - ack_grace for _, _, b in thaws),
                *(r + ack_grace for r in restarts()),
                *(b for _, _, b in timeline.stopping),
            }
        )
        for start, end in _intervals(points, both_down):
            if timeline.retired(site, start):
                continue
            certain = [(a, b) for a, b in _intervals(graced, both_surely_down) if start <= a < end]
            edges = [start, *(x for window in certain for x in window), end]
            unsure += [
                (a, b, FROZEN_OR_STOPPING)
                for a, b in zip(edges[::2], edges[1::2], strict=True)
                if b > a
            ]
            lost += certain
            notes.append(
                f"{site}: both ICONs down in [{start:.0f}s, {end:.0f}s):"
                " events emitted then reach no queue"
            )
        for link, start, end, why in congested or []:
            home = gim_site(start)
            if site in link and home in link and site != home:
                unsure.append((start, end, CONGESTION))
                notes.append(
                    f"{site}: {why} in [{start:.0f}s, {end:.0f}s): it may fall behind past"
                    " the threshold, so its events then may go either way"
                )
        # A copy that reaches GIM only after a return is judged by that return's cut, like
        # the gap's own events: an event older than the cut whose only copies were out of
        # GIM's reach until then (its partner missed it, a hole the other member covers
        # only in an IDB GIM could not read) is discarded too, wherever it lies.
        for returned, complete, cut, cut_late, surely in returns:
            # The gap's own events are judged above; these are older (a hole before it),
            # but not older than a recovery before it: those are the census's (`held`).
            floor = max(
                (r for where, r, _ in timeline.recoveries if where == site and r <= complete),
                default=-INF,
            )
            losses = [f for f, _ in timeline.retired_spans.get(site, []) if f >= floor]
            before = min([complete, *losses])
            for a, b in itertools.pairwise(points):
                if a >= min(cut_late, before):
                    break
                if b <= floor:
                    continue
                arrives = delivered(a, b)
                if arrives is None or arrives == INF or arrives < returned:
                    continue  # read before the return (or never emitted to a member)
                if surely and a < min(cut, before):
                    lost.append((a, min(b, cut, before)))
                edge = (max(a, cut), min(b, cut_late, before))
                if not surely:
                    unsure.append((a, min(b, cut_late, before), STUCK_EDGE))
                elif edge[1] > edge[0]:
                    unsure.append((*edge, LATE_RETURN))
        windows[site] = _merge(lost)
        restarted = [
            (a - 1.0, b, SOURCE_DOWN)
            for a, b in timeline.down.get(source_name(site), [])
            if not timeline.retired(site, a)
        ]
        bands[site] = unsure + restarted
        ambiguous[site] = [(a, b) for a, b, _ in bands[site]]
        for where, back, held in timeline.recoveries:
            if where != site or not held:
                continue
            # What the old disks held comes back as late data, unless the site is stuck
            # again before it can be read: then it arrives with a return whose cut
            # (past the recovery, so past every one of them) discards it.
            after = [r for r in returns if back <= r[1] < back + tol + 1e-9]
            if any(surely for *_, surely in after):
                notes.append(
                    f"{site}: recovered at t={back:.0f}s but stuck again before its data"
                    f" could be read: the {len(held)} events its old disks held stay lost"
                )
                continue
            (recovered_either if after else recovered).update(held)
            notes.append(
                f"{site}: recovered at t={back:.0f}s on its old disks, which held"
                f" {len(held)} of the events its census counted lost: they come back"
                + (" unless a stuck judgement within the tolerance cuts them" if after else "")
            )
    must_keep = {
        site: _saved_by_partner(timeline, site, failed_at, tol + 3 * rtt_at(failed_at))
        for site, failed_at in timeline.failed.items()
    }
    for census in censuses:
        notes.append(
            f"{census['site']} failed: of its {census['events']} events,"
            f" {census['in_surviving_idbs']} were in a surviving IDB and"
            f" {census['only_in_surviving_infomart']} only in the surviving Info Mart;"
            f" {len(census['lost'])} were nowhere else: lost"
        )
    return Prediction(
        windows,
        tol,
        ambiguous,
        notes,
        censuses,
        census_lost,
        must_keep=must_keep,
        bands=bands,
        recovered=recovered,
        recovered_either=recovered_either,
    )


Unread = dict[tuple[str, str], tuple[float, float]]  # (ICON, IDB) -> (first, newest) write


def _add_unread(pending: Unread, writes: Unread) -> None:
    """Writes no GIM has read yet, kept as the oldest and the newest per (ICON, IDB)."""
    for pair, (first, newest) in writes.items():
        if pair in pending:
            first = min(first, pending[pair][0])
            newest = max(newest, pending[pair][1])
        pending[pair] = (first, newest)


# Round trips a site's data may be behind when its flow stops over a slow WAN: an ICON's
# commit (connect, statements, commit) and GIM's extraction (snapshot, rows, heartbeats).
IN_FLIGHT_TRIPS = 6


def _in_flight(rtt: float, cycle: float) -> float:
    """How much older what GIM had read when a flow stopped may be over a WAN with this
    round trip: an ICON's commit and GIM's extraction each take a few round trips, and on
    virtual time a write still on its way when GIM extracts at an instant is read only at
    its next cycle (`cycle`, one heartbeat; 0 on the realtime clock, whose tolerance
    holds a heartbeat already)."""
    return IN_FLIGHT_TRIPS * rtt + (cycle if rtt > 0 else 0.0)


def _saved_by_partner(
    timeline: _Timeline, site: str, failed_at: float, margin: float
) -> list[Window]:
    """When a member of the lost site's pair was writing to an IDB that survives: up,
    that IDB up and reachable. What it took more than `margin` (the tolerance and a few WAN
    round trips: a batch in flight) before it stopped is in that IDB."""
    points = [p for p in timeline.change_points() if p < failed_at] + [failed_at]

    def writing(t: float) -> bool:
        topo = timeline.topology_at(t)
        site_of = {s.name: s.site for s in topo.servers}
        pair = next((p for p in topo.icon_pairs() if p.site == site), None)
        if timeline.is_down(source_name(site), t):
            return False  # what the source had not handed over when it stopped is not saved
        return pair is not None and any(
            site_of[m.idb] not in timeline.failed
            and not timeline.is_down(m.name, t)
            and not timeline.is_down(m.idb, t)
            and timeline.linked(m.site, site_of[m.idb], t)
            for m in (pair.a, pair.b)
        )

    spans = _intervals(sorted({0.0, *points}), writing)
    return [(a, b - margin) for a, b in spans if b - margin > a]


def _segments(points: list[float], serving: Callable[[float], bool]) -> list[Window]:
    """The maximal intervals in which a GIM is in service; the last one runs on for ever
    when it lasts to the end (reporting is judged after the run's last step too)."""
    found = _intervals([*points, INF], serving)
    return found


def _stuck_at(
    segments: list[Window],
    start: float,
    after: float,
    until: float,
    min_length: float,
    priming: Callable[[float], float],
    not_before: float = -INF,
) -> float | None:
    """When a GIM in service sees a site whose data stopped at `start` lag past the
    threshold: the first time in (start + after, until), and not before `not_before`, it
    has been in service for more than `min_length`. A GIM that came into service after
    `start` first hears every source anew, which takes `priming(its start)`."""
    for a, b in segments:
        ready = a if a <= start else a + priming(a)
        lo, hi = max(ready, start + after, not_before), min(b, until)
        if hi - lo > min_length:
            return lo
    return None


def _no_wait(t: float) -> float:
    return 0.0


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
