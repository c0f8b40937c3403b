"""The deployment being tested, as plain data: sites, servers, ICON pairs, GIMs, WAN links.

A topology says *what* exists and how it is wired; backends decide *where* it runs. Every
later piece (the WAN proxy wiring, the pipeline, the scenario engine) reads this model, so
the rules of the documented deployments are checked here once, when the file is loaded.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, cast

from testbed import datafile
from testbed.errors import InvalidFile

Role = Literal["idb", "infomart"]
Mode = Literal["active-standby", "active-active"]

ROLES: tuple[Role, ...] = ("idb", "infomart")
MODES: tuple[Mode, ...] = ("active-standby", "active-active")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,30}$")

# The database of the Info Mart on every infomart server.
INFOMART_DATABASE = "infomart"


@dataclass(frozen=True)
class ServerSpec:
    """A PostgreSQL server: an IDB (one database per ICON writing to it) or an Info Mart."""

    name: str
    site: str
    role: Role
    databases: tuple[str, ...]
    port: int | None = None
    standby_of: str | None = None

    @property
    def is_standby(self) -> bool:
        return self.standby_of is not None

    def describe_role(self) -> str:
        if self.standby_of:
            return f"{self.role} (standby of {self.standby_of})"
        if self.role == "infomart":
            return f"{self.role} (primary)"
        return self.role


@dataclass(frozen=True)
class IconSpec:
    """One member of a site's ICON HA pair; it writes to its own database on `idb`."""

    name: str
    site: str
    member: Literal["a", "b"]
    idb: str

    @property
    def database(self) -> str:
        return self.name


@dataclass(frozen=True)
class IconPair:
    """The two ICONs collecting one site's events: `a` writes locally, `b` across the WAN."""

    site: str
    a: IconSpec
    b: IconSpec


@dataclass(frozen=True)
class GimSpec:
    """An Info Mart extractor; only active ones run when a topology comes up."""

    name: str
    site: str
    infomart: str
    active: bool


@dataclass(frozen=True)
class Route:
    """A connection that crosses the WAN: the proxy issue puts a proxy on each one."""

    client: str
    client_site: str
    server: str
    server_site: str
    purpose: Literal["icon", "extract", "replication"]

    @property
    def name(self) -> str:
        return proxy_name(self.client, self.server)


def link_key(a: str, b: str) -> str:
    """A WAN link's name in routes: `site1|site2`, the same whichever way it is written."""
    return "|".join(sorted((a, b)))


def proxy_name(client: str, server: str) -> str:
    """The name of the WAN proxy on the route from `client` to `server`."""
    return f"{client}-to-{server}"


@dataclass(frozen=True)
class Topology:
    name: str
    mode: Mode
    sites: tuple[str, ...]
    servers: tuple[ServerSpec, ...]
    icons: tuple[IconSpec, ...]
    gims: tuple[GimSpec, ...]
    wan: tuple[tuple[str, str], ...]

    def server(self, name: str) -> ServerSpec:
        for spec in self.servers:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def site_of(self) -> dict[str, str]:
        """The site of every named part: servers, ICONs and GIMs (names are global)."""
        parts: tuple[ServerSpec | IconSpec | GimSpec, ...] = (
            *self.servers,
            *self.icons,
            *self.gims,
        )
        return {part.name: part.site for part in parts}

    def route_between(self, client: str, server: str) -> str | None:
        """The WAN link a connection from `client` to `server` crosses (`site1|site2`), None
        within a site: what the faults are named by (`link_key`)."""
        sites = self.site_of()
        a, b = sites.get(client), sites.get(server)
        return None if a is None or b is None or a == b else link_key(a, b)

    def servers_at(self, site: str) -> tuple[ServerSpec, ...]:
        return tuple(s for s in self.servers if s.site == site)

    def icon_pairs(self) -> tuple[IconPair, ...]:
        pairs = []
        for site in self.sites:
            members = {i.member: i for i in self.icons if i.site == site}
            if members:
                pairs.append(IconPair(site=site, a=members["a"], b=members["b"]))
        return tuple(pairs)

    def start_order(self) -> tuple[tuple[ServerSpec, ...], tuple[ServerSpec, ...]]:
        """Servers that start on their own, then standbys that need their primary first."""
        return (
            tuple(s for s in self.servers if not s.is_standby),
            tuple(s for s in self.servers if s.is_standby),
        )

    def cross_site_routes(self) -> tuple[Route, ...]:
        """Every client->server connection whose ends are at different sites."""
        routes: list[Route] = []
        site_of = {s.name: s.site for s in self.servers}
        for icon in self.icons:
            if site_of[icon.idb] != icon.site:
                routes.append(Route(icon.name, icon.site, icon.idb, site_of[icon.idb], "icon"))
        for gim in self.gims:
            for idb in (s for s in self.servers if s.role == "idb" and s.site != gim.site):
                routes.append(Route(gim.name, gim.site, idb.name, idb.site, "extract"))
        for standby in self.servers:
            primary = standby.standby_of
            if primary is not None and site_of[primary] != standby.site:
                routes.append(
                    Route(standby.name, standby.site, primary, site_of[primary], "replication")
                )
        return tuple(routes)


BUILTIN = ("active-standby", "active-active")


def topology_to_dict(topo: Topology) -> dict:
    """Plain data for the history: the topology a run ended with may differ from its file
    (a replacement site added during return to normal)."""
    return dataclasses.asdict(topo)


def topology_from_dict(data: dict) -> Topology:
    return Topology(
        name=data["name"],
        mode=data["mode"],
        sites=tuple(data["sites"]),
        servers=tuple(
            ServerSpec(**{**s, "databases": tuple(s["databases"])}) for s in data["servers"]
        ),
        icons=tuple(IconSpec(**i) for i in data["icons"]),
        gims=tuple(GimSpec(**g) for g in data["gims"]),
        wan=tuple(tuple(link) for link in data["wan"]),
    )


def renamed_for_site(name: str, old_site: str, new_site: str) -> str:
    """`idb1` -> `idb3` when site3 replaces site1; `<name>_<site>` when the site names do
    not end in a number."""
    old = re.fullmatch(r"[a-z_]*?(\d+)", old_site)
    new = re.fullmatch(r"[a-z_]*?(\d+)", new_site)
    if old and new and old.group(1) in name:
        return name.replace(old.group(1), new.group(1), 1)
    return f"{name}_{new_site}"


def extraction_source(icon: IconSpec, life: int = 1) -> str:
    """GIM's name for an ICON's database on its IDB. One on an IDB rebuilt empty under its
    old name (`life` 2 on) is a new source: its transaction ids start over."""
    return f"{icon.name}@{icon.idb}" + (f"#{life}" if life > 1 else "")


def with_replacement_site(topo: Topology, new_site: str, replaces: str) -> Topology:
    """The topology once `new_site` is built to take over the role of the lost `replaces`:
    an IDB and an empty Info Mart of its own, its own ICON pair (member b writing to the
    same remote IDB as the lost site's member b did), the other sites' member b re-pointed
    to the new IDB, a GIM that is not in service, and WAN links to every surviving site.
    The lost site stays in the model: its events are part of the ground truth."""
    if new_site in topo.sites:
        raise InvalidFile(f"site '{new_site}' exists already")
    rename = {}
    for name in [s.name for s in topo.servers_at(replaces)]:
        rename[name] = renamed_for_site(name, replaces, new_site)
    parts: tuple[IconSpec | GimSpec, ...] = (*topo.icons, *topo.gims)
    for item in parts:
        if item.site == replaces:
            rename[item.name] = renamed_for_site(item.name, replaces, new_site)
    taken = set(topo.site_of()) | set(topo.sites)
    clash = sorted(set(rename.values()) & taken)
    if clash:
        raise InvalidFile(f"cannot add site '{new_site}': names {', '.join(clash)} are taken")
    new_servers = tuple(
        ServerSpec(rename[s.name], new_site, s.role, (), None, None)
        for s in topo.servers_at(replaces)
    )
    icons: list[IconSpec] = []
    for icon in topo.icons:
        if icon.site != replaces and icon.idb in rename:
            icons.append(IconSpec(icon.name, icon.site, icon.member, rename[icon.idb]))
        else:
            icons.append(icon)
    for icon in topo.icons:
        if icon.site == replaces:
            idb = rename.get(icon.idb, icon.idb)
            icons.append(IconSpec(rename[icon.name], new_site, icon.member, idb))
    gims = list(topo.gims) + [
        GimSpec(rename[g.name], new_site, rename[g.infomart], False)
        for g in topo.gims
        if g.site == replaces
    ]
    databases: dict[str, list[str]] = {s.name: [] for s in (*topo.servers, *new_servers)}
    for icon in icons:
        databases[icon.idb].append(icon.database)
    servers = tuple(
        ServerSpec(
            s.name,
            s.site,
            s.role,
            tuple(databases[s.name]) + ((INFOMART_DATABASE,) if s.role == "infomart" else ()),
            s.port,
            s.standby_of,
        )
        for s in (*topo.servers, *new_servers)
    )
    wan = topo.wan + tuple(
        (site, new_site) for site in topo.sites if site != replaces and site != new_site
    )
    return Topology(
        topo.name, topo.mode, (*topo.sites, new_site), servers, tuple(icons), tuple(gims), wan
    )


def load_topology(name_or_path: str | Path) -> Topology:
    """A built-in topology by name, or a topology file; errors name the file, line and field."""
    text = str(name_or_path)
    if text in BUILTIN:
        source = resources.files("testbed") / "topologies" / f"{text}.yaml"
        return parse_topology(datafile.loads(source.read_text(encoding="utf-8"), source=text))
    path = Path(text)
    if not path.exists():
        raise InvalidFile(
            f"unknown topology '{text}': not a built-in ({', '.join(BUILTIN)}) and no such file"
        )
    return parse_topology(datafile.load(path))


def default_topology() -> Topology:
    return load_topology("active-standby")


def parse_topology(doc: datafile.DataFile) -> Topology:
    return _Parser(doc).topology()


class _Parser:
    """Validates a topology document field by field, failing on the first problem."""

    TOP_KEYS = ("name", "mode", "sites", "servers", "icons", "gims", "wan")

    def __init__(self, doc: datafile.DataFile) -> None:
        self.doc = doc
        self.names: dict[str, tuple[str | int, ...]] = {}

    def fail(self, path: tuple[str | int, ...], message: str) -> InvalidFile:
        return self.doc.error(path, message)

    def mapping(self, value: object, path: tuple[str | int, ...], keys: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping with keys {', '.join(keys)}")
        for key in value:
            if key not in keys:
                raise self.fail((*path, key), f"unknown field (expected one of: {', '.join(keys)})")
        return value

    def name(self, value: object, path: tuple[str | int, ...]) -> str:
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            raise self.fail(path, f"{value!r} is not a valid name (lowercase letters, digits, _)")
        return value

    def claim(self, name: str, path: tuple[str | int, ...]) -> None:
        """Names are global: a scenario step targets `idb1` or `icon2b` without a kind."""
        if name in self.names:
            raise self.fail(path, f"name '{name}' is already used at {self.names[name][0]}")
        self.names[name] = path

    def one_of(self, value: object, path: tuple[str | int, ...], choices: tuple) -> str:
        if value not in choices:
            raise self.fail(path, f"{value!r} is not one of: {', '.join(map(str, choices))}")
        return value  # type: ignore[return-value]

    def topology(self) -> Topology:
        top = self.mapping(self.doc.data, (), self.TOP_KEYS)
        for key in ("sites", "servers"):
            if key not in top:
                raise self.fail((), f"missing required field '{key}'")
        name = top.get("name", "custom")
        if not isinstance(name, str) or not name:
            raise self.fail(("name",), "must be a non-empty string")
        sites = self.sites(top["sites"])
        servers = self.servers(top["servers"], sites)
        icons = self.icons(top.get("icons", {}), sites, servers)
        gims = self.gims(top.get("gims", {}), sites, servers)
        mode = self.mode(top.get("mode"), servers, gims)
        wan = self.wan(top.get("wan"), sites)
        databases: dict[str, list[str]] = {s.name: [] for s in servers}
        for icon in icons:
            databases[icon.idb].append(icon.database)
        for s in servers:
            if s.role == "infomart":
                databases[s.name].append(INFOMART_DATABASE)
        servers = tuple(
            ServerSpec(s.name, s.site, s.role, tuple(databases[s.name]), s.port, s.standby_of)
            for s in servers
        )
        topo = Topology(name, mode, sites, servers, icons, gims, wan)
        linked = {frozenset(link) for link in wan}
        for route in topo.cross_site_routes():
            if frozenset((route.client_site, route.server_site)) not in linked:
                raise self.fail(
                    ("wan",),
                    f"{route.client} at {route.client_site} reaches {route.server} at "
                    f"{route.server_site}, but no WAN link joins those sites",
                )
        return topo

    def sites(self, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(("sites",), "must be a non-empty list of site names")
        for i, site in enumerate(value):
            self.claim(self.name(site, ("sites", i)), ("sites", i))
        return tuple(value)

    def servers(self, value: object, sites: tuple[str, ...]) -> tuple[ServerSpec, ...]:
        if not isinstance(value, dict) or not value:
            raise self.fail(("servers",), "must be a non-empty mapping of server name to fields")
        specs = []
        for name, fields in value.items():
            path = ("servers", name)
            self.claim(self.name(name, path), path)
            fields = self.mapping(fields, path, ("site", "role", "port", "standby_of"))
            for key in ("site", "role"):
                if key not in fields:
                    raise self.fail(path, f"missing required field '{key}'")
            site = self.one_of(fields["site"], (*path, "site"), sites)
            role = self.one_of(fields["role"], (*path, "role"), ROLES)
            port = fields.get("port")
            if port is not None and (
                not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535
            ):
                raise self.fail((*path, "port"), f"{port!r} is not a port number in 1024..65535")
            specs.append(
                ServerSpec(name, site, cast(Role, role), (), port, fields.get("standby_of"))
            )
        by_name = {s.name: s for s in specs}
        for spec in specs:
            if spec.standby_of is None:
                continue
            field_path = ("servers", spec.name, "standby_of")
            primary = by_name.get(spec.standby_of)
            if primary is None:
                raise self.fail(field_path, f"unknown server '{spec.standby_of}'")
            if primary.name == spec.name or primary.standby_of is not None:
                raise self.fail(
                    field_path, "must name a primary server (not itself, not a standby)"
                )
            if primary.role != spec.role:
                raise self.fail(
                    field_path, f"'{primary.name}' is an {primary.role}, not an {spec.role}"
                )
        ports = [s.port for s in specs if s.port is not None]
        for spec in specs:
            if spec.port is not None and ports.count(spec.port) > 1:
                raise self.fail(("servers", spec.name, "port"), f"port {spec.port} is used twice")
        return tuple(specs)

    def icons(
        self, value: object, sites: tuple[str, ...], servers: tuple[ServerSpec, ...]
    ) -> tuple[IconSpec, ...]:
        if not isinstance(value, dict):
            raise self.fail(("icons",), "must be a mapping of ICON name to fields")
        idbs = {s.name: s for s in servers if s.role == "idb"}
        specs = []
        for name, fields in value.items():
            path = ("icons", name)
            self.claim(self.name(name, path), path)
            fields = self.mapping(fields, path, ("site", "member", "idb"))
            for key in ("site", "member", "idb"):
                if key not in fields:
                    raise self.fail(path, f"missing required field '{key}'")
            site = self.one_of(fields["site"], (*path, "site"), sites)
            member = self.one_of(fields["member"], (*path, "member"), ("a", "b"))
            idb = self.one_of(fields["idb"], (*path, "idb"), tuple(idbs))
            here = idbs[idb].site == site
            if member == "a" and not here:
                raise self.fail((*path, "idb"), "member a writes to the IDB at its own site")
            if member == "b" and here and len(sites) > 1:
                raise self.fail((*path, "idb"), "member b writes to an IDB at another site")
            specs.append(IconSpec(name, site, cast(Literal["a", "b"], member), idb))
        for site in sites:
            members = sorted(i.member for i in specs if i.site == site)
            if members and members != ["a", "b"]:
                raise self.fail(
                    ("icons",), f"site {site} needs exactly one ICON of member a and one of b"
                )
        return tuple(specs)

    def gims(
        self, value: object, sites: tuple[str, ...], servers: tuple[ServerSpec, ...]
    ) -> tuple[GimSpec, ...]:
        if not isinstance(value, dict):
            raise self.fail(("gims",), "must be a mapping of GIM name to fields")
        infomarts = {s.name: s for s in servers if s.role == "infomart"}
        specs = []
        for name, fields in value.items():
            path = ("gims", name)
            self.claim(self.name(name, path), path)
            fields = self.mapping(fields, path, ("site", "infomart", "active"))
            for key in ("site", "infomart"):
                if key not in fields:
                    raise self.fail(path, f"missing required field '{key}'")
            site = self.one_of(fields["site"], (*path, "site"), sites)
            infomart = self.one_of(fields["infomart"], (*path, "infomart"), tuple(infomarts))
            if infomarts[infomart].site != site:
                raise self.fail((*path, "infomart"), "a GIM loads the Info Mart at its own site")
            active = fields.get("active", False)
            if not isinstance(active, bool):
                raise self.fail((*path, "active"), "must be true or false")
            if active and infomarts[infomart].is_standby:
                raise self.fail((*path, "active"), f"cannot load standby '{infomart}'")
            specs.append(GimSpec(name, site, infomart, active))
        return tuple(specs)

    def mode(
        self, value: object, servers: tuple[ServerSpec, ...], gims: tuple[GimSpec, ...]
    ) -> Mode:
        has_standby = any(s.is_standby for s in servers)
        if value is None:
            return "active-standby" if has_standby or len(gims) < 2 else "active-active"
        mode = self.one_of(value, ("mode",), MODES)
        active = [g for g in gims if g.active]
        if mode == "active-standby" and gims and len(active) != 1:
            raise self.fail(
                ("mode",), f"active-standby runs exactly one active GIM, not {len(active)}"
            )
        if mode == "active-active" and has_standby:
            raise self.fail(("mode",), "active-active has no standby Info Mart (no replication)")
        return mode  # type: ignore[return-value]

    def wan(self, value: object, sites: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        if value is None:
            return tuple((a, b) for i, a in enumerate(sites) for b in sites[i + 1 :])
        if not isinstance(value, list):
            raise self.fail(("wan",), "must be a list of site pairs like [site1, site2]")
        links = []
        for i, link in enumerate(value):
            if not isinstance(link, list) or len(link) != 2:
                raise self.fail(("wan", i), "must be a pair of sites like [site1, site2]")
            a = self.one_of(link[0], ("wan", i), sites)
            b = self.one_of(link[1], ("wan", i), sites)
            if a == b:
                raise self.fail(("wan", i), "a WAN link joins two different sites")
            links.append((a, b))
        return tuple(links)


def source_name(site: str) -> str:
    """`site2` -> `source2` (the names scenarios use); other site names -> `source_<site>`."""
    match = re.fullmatch(r"site(\d+)", site)
    return f"source{match.group(1)}" if match else f"source_{site}"
