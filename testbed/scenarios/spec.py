"""Scenario files: the YAML contract users write against, parsed and checked up front.

Every mistake is one line naming the file, the line and the field (`InvalidFile`, exit code
2), found before anything starts: a typo must not cost a ten-minute run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import datafile
from testbed.clock import DEFAULT_FACTOR, parse_duration, parse_factor
from testbed.errors import InvalidFile, TestbedError
from testbed.netfault.toxics import REGISTRY
from testbed.topology import Topology, load_topology, source_name, with_replacement_site
from testbed.vclock.engine_clock import VIRTUAL_FACTOR
from testbed.verdict.tolerance import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_THRESHOLD_S,
    refusal,
    tolerance_for,
)

TOP_KEYS = ("name", "description", "topology", "clock", "settings", "workload", "steps", "expect")
SETTINGS = ("extract_data_stuck_threshold", "delayed_data_threshold", "heartbeat_interval")
# Bounds on what a file may ask for: past them a run would take hours or gigabytes and
# nobody meant it. A contact centre's busiest site sees tens of thousands of calls an hour;
# the catalog's longest scenario is a day.
MAX_RATE_PER_HOUR = 100_000
MAX_SCENARIO_S = 1000 * 3600.0
LONGEST = "1000h"
MAX_CHAOS_FAULTS = 10_000
PROCESS_VERBS = ("kill", "stop", "start", "pause", "resume")
DR_VERBS = (
    "fail-site",
    "promote",
    "activate-gim",
    "add-site",
    "recover-site",
    "transfer",
    "switchover",
)
CHAOS_FAULTS = ("partition", "latency", "bandwidth", "kill", "stop", "pause")
VERB_KEYS: dict[str, tuple[str, ...]] = {
    "partition": ("mode", "direction"),
    "heal": (),
    "latency": ("link", "ms", "jitter"),
    "bandwidth": ("link", "rate"),
    "toxic": ("link", "type", "stream", "toxicity", "attributes"),
    **{verb: ("target",) for verb in PROCESS_VERBS},
    "settle": (),
    "wait": (),
    "chaos": ("until", "seed", "faults", "mean_interval", "targets"),
    "fail-site": (),
    "promote": ("force",),
    "activate-gim": ("force",),
    "add-site": ("replaces",),
    "recover-site": ("disks",),
    "transfer": ("from", "to", "gim", "method"),
    "switchover": (),
}
EXPECT_KEYS = ("loss", "duplicates", "replica", "stuck", "stuck_at_end", "rto")


@dataclass
class Step:
    at: float
    verb: str
    value: Any
    options: dict[str, Any]
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "verb": self.verb, "value": self.value, "options": self.options}


@dataclass
class Scenario:
    name: str
    description: str
    topology: Topology
    topology_ref: str
    factor: float
    settings: dict[str, float]
    rate_per_hour: float
    seed: int
    steps: list[Step]
    expect: dict[str, Any]
    source: str = ""
    notes: list[str] = field(default_factory=list)


def scenario_dirs() -> list[Path]:
    """Where named scenarios are found, the first folder holding a name winning: the user's
    own `./scenarios`, then the catalog of the checkout this package runs from (so an edit
    shows at once), then the copy a wheel ships inside the package (so an installed
    `testbed` finds the catalog from any folder)."""
    package = Path(__file__).resolve().parents[1]
    folders = [Path("scenarios")]
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file():  # not some other `scenarios` in site-packages
        folders.append(checkout / "scenarios")
    folders.append(package / "catalog")
    unique: list[Path] = []
    for folder in folders:
        if folder.is_dir() and all(not folder.samefile(seen) for seen in unique):
            unique.append(folder)
    return unique


def catalog() -> dict[str, Path]:
    """Every scenario that can be named: name -> file, in name order."""
    found: dict[str, Path] = {}
    for folder in scenario_dirs():
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def find_scenario(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise InvalidFile(f"{path}: no such file")
        return path
    named = catalog()
    if name_or_path in named:
        return named[name_or_path]
    known = ", ".join(named)
    raise InvalidFile(f"unknown scenario '{name_or_path}' (catalog: {known or 'empty'})")


def load_scenario(name_or_path: str | Path, clock: str | None = None) -> Scenario:
    """A scenario file, checked; `clock` (`virtual`, `1h = 1s`) replaces the file's own
    (a catalog file on a backend that cannot keep virtual time, say)."""
    path = find_scenario(str(name_or_path))
    doc = datafile.load(path)
    if clock is not None and isinstance(doc.data, dict):
        doc.data = {**doc.data, "clock": clock}
    return _Parser(doc, default_factor=VIRTUAL_FACTOR).scenario()


def scenario_from_data(data: Any, source: str) -> Scenario:
    """A scenario given as plain data rather than a file (a Chaos Toolkit experiment's
    settings), checked as a file is, its errors naming `source` and the field."""
    return _Parser(datafile.DataFile(source, data)).scenario()


def parse_step(
    raw: Any, topology: Topology, failed: Iterable[str] = (), source: str = "step"
) -> Step:
    """One step checked against the topology as it is now, for a run driven step by step:
    the same checks and one-line errors as a step of a file. `failed` are the sites lost
    so far (an `add-site` replaces one)."""
    names = _Names(topology)
    names.failed = list(failed)
    return _Parser(datafile.DataFile(source, raw)).step(raw, (), names)


class _Parser:
    def __init__(self, doc: datafile.DataFile, default_factor: float = DEFAULT_FACTOR) -> None:
        self.doc = doc
        # A file that names no clock runs on virtual time; a live environment (a Chaos
        # Toolkit experiment's settings) defaults to the realtime clock, as wall time
        # passes between its activities.
        self.default_factor = default_factor

    def fail(self, path: tuple, message: str) -> InvalidFile:
        return self.doc.error(path, message)

    def duration(self, value: Any, path: tuple) -> float:
        try:
            return parse_duration(value)
        except TestbedError as exc:
            raise self.fail(path, str(exc)) from None

    def positive(self, value: Any, path: tuple) -> float:
        """A duration that means nothing at zero (a threshold, a period, a settle)."""
        seconds = self.duration(value, path)
        if seconds <= 0:
            raise self.fail(path, f"{value!r}: must be longer than 0s")
        return seconds

    def mapping(self, value: Any, path: tuple, keys: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping with keys {', '.join(keys)}")
        for key in value:
            if key not in keys:
                raise self.fail((*path, key), f"unknown field (expected one of: {', '.join(keys)})")
        return value

    def scenario(self) -> Scenario:
        top = self.mapping(self.doc.data, (), TOP_KEYS)
        if "name" not in top:
            raise self.fail((), "missing required field 'name'")
        ref = str(top.get("topology", "active-standby"))
        try:
            topology = load_topology(ref)
        except InvalidFile as exc:
            raise self.fail(("topology",), str(exc)) from None
        try:
            if str(top.get("clock", "")).strip() == "virtual":
                factor = VIRTUAL_FACTOR
            else:
                factor = parse_factor(top["clock"]) if "clock" in top else self.default_factor
        except TestbedError as exc:
            raise self.fail(("clock",), str(exc)) from None
        settings = {
            key: self.positive(value, ("settings", key))
            for key, value in self.mapping(top.get("settings"), ("settings",), SETTINGS).items()
        }
        workload = self.mapping(top.get("workload"), ("workload",), ("rate", "seed"))
        rate = self.rate(workload.get("rate", "600/h"))
        seed = workload.get("seed", 1)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise self.fail(("workload", "seed"), f"{seed!r} is not an integer")
        steps_raw = top.get("steps") or []
        if not isinstance(steps_raw, list):
            raise self.fail(("steps",), "must be a list of steps")
        names = _Names(topology)
        steps = [self.step(raw, ("steps", i), names) for i, raw in enumerate(steps_raw)]
        steps.sort(key=lambda s: s.at)  # stable: same `at` keeps file order
        expect = self.expect(top.get("expect"), names)
        self.judgeable(factor, settings, expect)
        return Scenario(
            name=str(top["name"]),
            description=str(top.get("description", "")),
            topology=topology,
            topology_ref=ref,
            factor=factor,
            settings=settings,
            rate_per_hour=rate,
            seed=seed,
            steps=steps,
            expect=expect,
            source=self.doc.source,
        )

    def judgeable(self, factor: float, settings: dict[str, float], expect: dict) -> None:
        """Refuse a clock so fast that the verdict's tolerance swallows the windows."""
        tolerance = tolerance_for(factor, settings.get("heartbeat_interval", DEFAULT_HEARTBEAT_S))
        threshold = settings.get("extract_data_stuck_threshold", DEFAULT_THRESHOLD_S)
        windows = {"extract_data_stuck_threshold": threshold}
        for site, stated in (expect.get("loss") or {}).items():
            if "window" in stated:
                windows[f"loss window stated for {site}"] = stated["window"]
        why = refusal(tolerance, windows)
        if why:
            raise self.fail(("clock",), why)

    def rate(self, value: Any) -> float:
        path = ("workload", "rate")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return self.bounded_rate(float(value), value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\w+)\s*", str(value))
        if not match:
            raise self.fail(path, f"{value!r} is not a rate like 600/h")
        per = self.duration(
            "1" + match.group(2) if match.group(2).isalpha() else match.group(2), path
        )
        rate = float(match.group(1)) * 3600.0 / per
        if rate <= 0:
            raise self.fail(path, "the rate must be positive")
        return self.bounded_rate(rate, value)

    def bounded_rate(self, rate: float, value: Any) -> float:
        if rate > MAX_RATE_PER_HOUR:
            raise self.fail(
                ("workload", "rate"),
                f"{value!r} is {rate:,.0f} events per site per hour, more than the workload"
                f" generator's {MAX_RATE_PER_HOUR:,}/h",
            )
        return rate

    def step(self, raw: Any, path: tuple, names: _Names) -> Step:
        if not isinstance(raw, dict):
            raise self.fail(path, "a step is a mapping like {at: 1h, partition: [site1, site2]}")
        if "at" not in raw:
            raise self.fail(path, "missing required field 'at'")
        at = self.duration(raw["at"], (*path, "at"))
        if at > MAX_SCENARIO_S:
            raise self.fail(
                (*path, "at"), f"{raw['at']!r} is past the longest scenario ({LONGEST})"
            )
        verbs = [k for k in raw if k in VERB_KEYS]
        if len(verbs) != 1:
            unknown = [
                k
                for k in raw
                if k != "at" and k not in VERB_KEYS and not any(k in VERB_KEYS[v] for v in verbs)
            ]
            if unknown:
                raise self.fail(
                    (*path, unknown[0]),
                    f"unknown step '{unknown[0]}' (steps: {', '.join(VERB_KEYS)})",
                )
            raise self.fail(path, "a step has exactly one verb (partition, heal, kill, ...)")
        verb = verbs[0]
        options = {k: v for k, v in raw.items() if k not in ("at", verb)}
        for key in options:
            if key not in VERB_KEYS[verb]:
                raise self.fail(
                    (*path, key),
                    f"'{verb}' takes no field '{key}'"
                    + (f" (fields: {', '.join(VERB_KEYS[verb])})" if VERB_KEYS[verb] else ""),
                )
        line = self.doc.line_of(path)
        value = raw[verb]
        vpath = (*path, verb)
        if verb in DR_VERBS:
            value, options = self.dr_step(verb, value, options, path, names)
        elif verb == "partition":
            names.link(value, vpath, self)
            mode = options.get("mode", "reset")
            if mode not in ("reset", "blackhole"):
                raise self.fail((*path, "mode"), f"{mode!r} is not one of: reset, blackhole")
            direction = options.get("direction")
            if direction is not None:
                a, _, b = str(direction).partition("->")
                if {a.strip(), b.strip()} != set(value):
                    raise self.fail(
                        (*path, "direction"),
                        f"must be '{value[0]}->{value[1]}' or '{value[1]}->{value[0]}'",
                    )
        elif verb == "heal":
            if value != "all":
                names.link(value, vpath, self)
        elif verb in ("latency", "bandwidth", "toxic"):
            names.link(options.get("link", value), (*path, "link"), self)
            if verb == "latency":
                for key in ("ms", "jitter"):
                    self.number(options.get(key, value if key == "ms" else 0), (*path, key))
            if verb == "bandwidth":
                self.number(options.get("rate"), (*path, "rate"))
            if verb == "toxic" and options.get("type") not in REGISTRY:
                raise self.fail(
                    (*path, "type"),
                    f"{options.get('type')!r} is not a toxic ({', '.join(REGISTRY)})",
                )
        elif verb in PROCESS_VERBS:
            names.target(options.get("target", value), vpath, self)
        elif verb == "settle":
            value = self.positive(value, vpath)
        elif verb == "wait":
            value = self.duration(value, vpath)
        if verb in ("settle", "wait") and at + value > MAX_SCENARIO_S:
            raise self.fail(vpath, f"ends past the longest scenario ({LONGEST})")
        elif verb == "chaos":
            options["until"] = self.duration(options.get("until"), (*path, "until"))
            if options["until"] <= at:
                raise self.fail((*path, "until"), "must be after `at`")
            options["mean_interval"] = self.positive(
                options.get("mean_interval", "1h"), (*path, "mean_interval")
            )
            faults_expected = (options["until"] - at) / options["mean_interval"]
            if faults_expected > MAX_CHAOS_FAULTS:
                raise self.fail(
                    (*path, "mean_interval"),
                    f"about {faults_expected:,.0f} faults from `at` to `until`, more than"
                    f" {MAX_CHAOS_FAULTS:,}: make it longer",
                )
            faults = options.get("faults", ["partition", "latency", "kill"])
            for i, fault in enumerate(faults if isinstance(faults, list) else [faults]):
                if fault not in CHAOS_FAULTS:
                    raise self.fail(
                        (*path, "faults", i),
                        f"{fault!r} is not a chaos fault ({', '.join(CHAOS_FAULTS)})",
                    )
            options["faults"] = list(faults)
        return Step(at, verb, value, options, line)

    def dr_step(
        self, verb: str, value: Any, options: dict[str, Any], path: tuple, names: _Names
    ) -> tuple[Any, dict[str, Any]]:
        """Operator procedures name a site; `transfer` names two (a mapping or step fields)."""
        vpath = (*path, verb)
        if "force" in options and not isinstance(options["force"], bool):
            raise self.fail((*path, "force"), "must be true or false")
        if verb == "transfer":
            fields = dict(value) if isinstance(value, dict) else {}
            fields |= {k: options[k] for k in ("from", "to", "gim", "method") if k in options}
            for key in fields:
                if key not in ("from", "to", "gim", "method"):
                    raise self.fail((*vpath, key), "transfer takes from, to, gim and method")
            for key in ("from", "to"):
                if key not in fields:
                    raise self.fail(vpath, f"transfer needs '{key}' (a site)")
                names.site(fields[key], (*vpath, key), self)
            if fields["from"] == fields["to"]:
                raise self.fail(vpath, "transfer goes from one site to another")
            fields.setdefault("gim", "running")
            if fields["gim"] not in ("running", "stopped"):
                raise self.fail((*vpath, "gim"), f"{fields['gim']!r} is not running or stopped")
            fields.setdefault("method", "basebackup")
            if fields["method"] not in ("basebackup", "rewind"):
                raise self.fail(
                    (*vpath, "method"), f"{fields['method']!r} is not basebackup or rewind"
                )
            return fields, {}
        if verb == "add-site":
            if not isinstance(value, str) or value in names.sites:
                raise self.fail(vpath, f"{value!r} must name a new site (for example site3)")
            replaces = options.get("replaces")
            if replaces is None and len(names.failed) != 1:
                raise self.fail(vpath, "say which lost site it replaces: `replaces: site1`")
            replaces = replaces or names.failed[0]
            names.site(replaces, (*path, "replaces"), self)
            if replaces not in names.failed:
                raise self.fail((*path, "replaces"), f"{replaces} has not failed")
            names.add_site(value, replaces)
            return value, {"replaces": replaces}
        names.site(value, vpath, self)
        if verb == "fail-site":
            names.failed.append(value)
        if verb == "recover-site":
            if value not in names.failed:
                raise self.fail(vpath, f"{value} has not failed; only a lost site recovers")
            if value in names.replaced:
                raise self.fail(
                    vpath, f"{value} was replaced by {names.replaced[value]}; it cannot recover"
                )
            disks = options.get("disks", "kept")
            if disks not in ("kept", "lost"):
                raise self.fail((*path, "disks"), f"{disks!r} is not kept or lost")
            names.failed.remove(value)
            return value, {"disks": disks}
        return value, options

    def number(self, value: Any, path: tuple) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.fail(path, f"{value!r} is not a non-negative number")
        return float(value)

    def expect(self, raw: Any, names: _Names) -> dict[str, Any]:
        expect = dict(self.mapping(raw, ("expect",), EXPECT_KEYS))
        if "loss" in expect:
            loss = self.mapping(expect["loss"], ("expect", "loss"), names.sites)
            parsed: dict[str, dict[str, float]] = {}
            for site, value in loss.items():
                path = ("expect", "loss", site)
                if isinstance(value, int) and not isinstance(value, bool):
                    parsed[site] = {"events": value} if value else {"events": 0}
                else:
                    parsed[site] = {"window": self.duration(value, path)}
            expect["loss"] = parsed
        if "duplicates" in expect and (
            not isinstance(expect["duplicates"], int) or expect["duplicates"] < 0
        ):
            raise self.fail(("expect", "duplicates"), "must be a count (normally 0)")
        if "replica" in expect and expect["replica"] not in ("consistent", "diverged"):
            raise self.fail(("expect", "replica"), "must be consistent or diverged")
        for key in ("stuck", "stuck_at_end"):
            if key in expect:
                stuck = expect[key] or []
                if not isinstance(stuck, list):
                    raise self.fail(("expect", key), "must be a list of sites")
                for i, site in enumerate(stuck):
                    if site not in names.sites:
                        raise self.fail(("expect", key, i), f"unknown site '{site}'")
                expect[key] = list(stuck)
        if "rto" in expect:
            match = re.fullmatch(r"\s*<=?\s*(\S+)\s*", str(expect["rto"]))
            if not match:
                raise self.fail(("expect", "rto"), "must read like '<= 30m'")
            expect["rto"] = self.duration(match.group(1), ("expect", "rto"))
        return expect


class _Names:
    """What a step may name: sites, links, processes and servers of the topology."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.failed: list[str] = []
        self.replaced: dict[str, str] = {}
        self._learn(topology)

    def _learn(self, topology: Topology) -> None:
        self.sites = topology.sites
        self.processes = (
            [i.name for i in topology.icons]
            + [g.name for g in topology.gims]
            + [source_name(p.site) for p in topology.icon_pairs()]
        )
        self.servers = [s.name for s in topology.servers]

    def add_site(self, site: str, replaces: str) -> None:
        """Steps after an `add-site` may name the new site and its parts."""
        self.topology = with_replacement_site(self.topology, site, replaces)
        self.replaced[replaces] = site
        self._learn(self.topology)

    def site(self, value: Any, path: tuple, parser: _Parser) -> None:
        if value not in self.sites:
            raise parser.fail(path, f"unknown site {value!r} (sites: {', '.join(self.sites)})")

    def link(self, value: Any, path: tuple, parser: _Parser) -> None:
        if not isinstance(value, list) or len(value) != 2:
            raise parser.fail(path, "must be a pair of sites like [site1, site2]")
        for site in value:
            if site not in self.sites:
                raise parser.fail(path, f"unknown site '{site}' (sites: {', '.join(self.sites)})")
        if value[0] == value[1]:
            raise parser.fail(path, "a link joins two different sites")

    def target(self, value: Any, path: tuple, parser: _Parser) -> None:
        known = [*self.processes, *self.servers, *self.sites]
        if value not in known:
            raise parser.fail(path, f"unknown target '{value}' (targets: {', '.join(known)})")
