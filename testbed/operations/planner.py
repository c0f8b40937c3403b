"""How long it takes to (re)build a standby Info Mart across the WAN, from measured rates.

Rebuilding the standby after a long outage means a base backup of the primary crossing the
WAN, then the standby catching up on the WAL that GIM wrote meanwhile. The link's nominal
rate is not what a base backup gets, and the WAL volume depends on how the Info Mart is
loaded; both were measured on real servers by `bench/transfer.py` and are kept in
`measured_rates.json`. Everything here is a pure function of its arguments, so a plan can
be checked by hand.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError
from testbed.pipeline.icon import BATCH_MAX, FLUSH_AFTER_S

_NUMBER = r"(?P<number>\d+(?:\.\d*)?|\.\d+)"

# Sizes are bytes: KB/MB/GB/TB are powers of 1000 (as disks and links count), the
# IEC units KiB/MiB/GiB/TiB powers of 1024 (as `du -h` and PostgreSQL's pg_size_pretty count).
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
}
SIZE_FORMS = "800GB, 1.5 TB, 500MiB (KB MB GB TB = powers of 1000; KiB MiB GiB TiB = of 1024)"

_PREFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY_PREFIXES = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
# Case matters only between bits and bytes (Mb/s is megabits, MB/s megabytes), as on a
# datasheet; `bit` and `bps` are bits whatever the case of the prefix.
_LINK = re.compile(
    rf"^{_NUMBER}\s*(?P<prefix>[kKmMgGtT]i?)?(?P<unit>bit/s|bits/s|bps|b/s|B/s|byte/s|bytes/s)$"
)
LINK_FORMS = "1Gbit/s, 100Mbit/s, 1Gbps, 10MB/s (bits: bit/s, bps, b/s; bytes: B/s)"

_PER = {
    "s": 3600.0,
    "sec": 3600.0,
    "min": 60.0,
    "h": 1.0,
    "hr": 1.0,
    "hour": 1.0,
    "d": 1 / 24,
    "day": 1 / 24,
}
WORKLOAD_FORMS = "2000/h, 0.5/s, 30/min, 48000/d (events per second, minute, hour or day)"

RATES_FILE = "measured_rates.json"


def parse_size(text: str) -> int:
    """`800GB`, `1.5 TB`, `500MiB` -> bytes.

    A unit is required: a bare number could be bytes, or gigabytes from a disk tool, and a
    plan that is off by a factor of a billion is worse than an error.
    """
    match = re.fullmatch(rf"\s*{_NUMBER}\s*(?P<unit>[A-Za-z]+)\s*", str(text))
    unit = match and match["unit"].lower()
    if not match or unit not in _SIZE_UNITS:
        raise TestbedError(f"size '{text}' not understood; give a number and a unit: {SIZE_FORMS}")
    size = float(match["number"]) * _SIZE_UNITS[unit]
    if size < 1:
        raise TestbedError(f"size '{text}' is empty; give a positive size: {SIZE_FORMS}")
    return round(size)


def parse_link(text: str) -> float:
    """`1Gbit/s`, `100Mbit/s`, `1Gbps`, `10MB/s` -> bytes per second.

    Links are sold in bits per second and copies report bytes per second; this is where the
    factor of 8 is applied, once.
    """
    match = _LINK.fullmatch(str(text).strip())
    if not match:
        raise TestbedError(f"link rate '{text}' not understood; use one of: {LINK_FORMS}")
    prefix = (match["prefix"] or "").lower()
    scale = _BINARY_PREFIXES[prefix] if prefix.endswith("i") else _PREFIXES[prefix]
    bits = match["unit"] not in ("B/s", "byte/s", "bytes/s")
    rate = float(match["number"]) * scale / (8 if bits else 1)
    if rate <= 0:
        raise TestbedError(f"link rate '{text}' is zero; nothing would ever arrive ({LINK_FORMS})")
    return rate


def parse_workload(text: str) -> float:
    """`2000/h`, `0.5/s`, `30/min`, `48000/d` -> events per hour.

    Contact-center volumes are quoted per hour (busy hour) or per day; the planner works
    per hour because that is the scale of an outage.
    """
    match = re.fullmatch(rf"\s*{_NUMBER}\s*/\s*(?P<per>[A-Za-z]+)\s*", str(text))
    per = match and match["per"].lower()
    if not match or per not in _PER:
        raise TestbedError(f"workload '{text}' not understood; use one of: {WORKLOAD_FORMS}")
    return float(match["number"]) * _PER[per]


@dataclass(frozen=True)
class MeasuredRates:
    """The figures a plan rests on, as `bench/transfer.py` measured them."""

    link_efficiency: float  # base backup rate through a paced link / the link's rate
    proxy_bytes_per_s: float  # base backup rate through the WAN proxy, unpaced
    wal_bytes_per_event: float  # WAL written per event GIM loads into the Info Mart
    measured_on: str = "unknown date"
    source: str = "bench/transfer.py"
    bandwidth_toxic_kb_s: float | None = None
    wal_batch: int | None = None  # events per transaction when WAL per event was measured
    postgres: str | None = None
    # What ICON's writes move across the WAN: per event, and per batch (one statement).
    icon_wire_bytes_per_event: float = 0.0
    icon_wire_bytes_per_batch: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeasuredRates:
        try:
            return cls(
                link_efficiency=float(data["link_efficiency"]),
                proxy_bytes_per_s=float(data["basebackup_proxy_mb_s"]) * 1e6,
                wal_bytes_per_event=float(data["wal_bytes_per_event"]),
                measured_on=str(data.get("measured_on", "unknown date")),
                source=str(data.get("source", "bench/transfer.py")),
                bandwidth_toxic_kb_s=data.get("bandwidth_toxic_kb_s"),
                wal_batch=data.get("wal_batch"),
                postgres=data.get("postgres"),
                icon_wire_bytes_per_event=float(data.get("icon_wire_bytes_per_event", 0.0)),
                icon_wire_bytes_per_batch=float(data.get("icon_wire_bytes_per_batch", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TestbedError(
                f"measured rates lack or garble {exc}; re-measure with "
                f"python bench/transfer.py --write testbed/operations/{RATES_FILE}"
            ) from None


def load_rates(path: str | Path | None = None) -> MeasuredRates:
    """The rates in `path`, or those shipped with the package."""
    try:
        if path is not None:
            text = Path(path).read_text(encoding="utf-8")
        else:
            text = (
                resources.files("testbed.operations")
                .joinpath(RATES_FILE)
                .read_text(encoding="utf-8")
            )
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise TestbedError(
            f"cannot read measured rates ({exc}); measure them with "
            f"python bench/transfer.py --write testbed/operations/{RATES_FILE}"
        ) from None
    return MeasuredRates.from_json(data)


def icon_bytes_per_s(workload_per_hour: float, rates: MeasuredRates) -> float:
    """ICON's writes on the wire: each event, and each batch's statement. ICON flushes a
    batch every `FLUSH_AFTER_S` or at `BATCH_MAX` events, so a busier site sends fewer,
    fuller batches."""
    per_second = workload_per_hour / 3600
    if per_second <= 0:
        return 0.0
    batch = min(BATCH_MAX, max(1.0, per_second * FLUSH_AFTER_S))
    return per_second * (rates.icon_wire_bytes_per_event + rates.icon_wire_bytes_per_batch / batch)


def catch_up_seconds(
    backlog_bytes: float, drain_bytes_per_s: float, wal_bytes_per_s: float
) -> float:
    """Time for a standby `backlog_bytes` behind to catch up while new WAL keeps coming.

    Streaming the backlog takes b/r; meanwhile w*b/r more WAL is written, which takes
    (w/r)*b/r to stream, and so on: b/r * (1 + q + q^2 + ...) with q = w/r, which sums to
    b/(r - w). It never ends (infinity) when the WAL comes as fast as the link drains it.
    """
    if backlog_bytes <= 0:
        return 0.0
    if wal_bytes_per_s >= drain_bytes_per_s:
        return math.inf
    return backlog_bytes / (drain_bytes_per_s - wal_bytes_per_s)


@dataclass
class TransferPlan:
    size_bytes: int
    link_bytes_per_s: float
    link_efficiency: float
    effective_bytes_per_s: float
    capped_by_proxy: bool
    transfer_s: float
    workload_per_hour: float | None = None
    wal_bytes_per_event: float | None = None
    wal_bytes_per_s: float | None = None
    wal_during_transfer_bytes: float | None = None
    icon_bytes_per_s: float | None = None  # ICON batches crossing the link in the copy's way
    copy_bytes_per_s: float | None = None  # what is left of the link for the copy
    catch_up_s: float | None = None  # math.inf: never catches up
    total_s: float | None = None  # math.inf: never catches up
    assumptions: list[str] = field(default_factory=list)

    @property
    def catches_up(self) -> bool:
        return self.total_s is not None and math.isfinite(self.total_s)

    def to_json(self) -> dict[str, Any]:
        """Plain data; never-ending times are null (JSON has no infinity), `catches_up` false."""
        data = {
            key: (None if isinstance(value, float) and math.isinf(value) else value)
            for key, value in asdict(self).items()
        }
        data["catches_up"] = self.catches_up
        return data


def plan_transfer(
    size_bytes: int,
    link_bytes_per_s: float,
    workload_per_hour: float | None,
    rates: MeasuredRates,
) -> TransferPlan:
    """A base backup of `size_bytes` over a link of nominal `link_bytes_per_s`, and, with a
    workload, the catch-up on the WAL GIM writes meanwhile.

    The total is the same whether the WAL streams alongside the copy (pg_basebackup
    `--wal-method stream`, sharing the link) or after it: size / (rate - WAL rate).
    """
    if size_bytes <= 0 or link_bytes_per_s <= 0:
        raise TestbedError("size and link rate must both be positive")
    if workload_per_hour is not None and workload_per_hour < 0:
        raise TestbedError("workload must not be negative")
    efficient = link_bytes_per_s * rates.link_efficiency
    capped = efficient > rates.proxy_bytes_per_s
    effective = rates.proxy_bytes_per_s if capped else efficient
    transfer_s = size_bytes / effective
    when = f"{rates.source}, {rates.measured_on}"
    paced = (
        f" at {rates.bandwidth_toxic_kb_s:g} KB/s" if rates.bandwidth_toxic_kb_s is not None else ""
    )
    assumptions = [
        f"a base backup gets {rates.link_efficiency:.0%} of the link's nominal rate: measured "
        f"through a bandwidth-limited proxy{paced} ({when}); start-up (checkpoint, "
        "connection) is inside that figure, so long copies do slightly better",
        "the size is what pg_basebackup sends (the whole data directory, indexes included, "
        "uncompressed)",
    ]
    if capped:
        assumptions.append(
            f"the link ({format_rate(efficient)} usable) is faster than the "
            f"{format_rate(rates.proxy_bytes_per_s)} a base backup reached through the WAN "
            f"proxy when measured ({when}): planned at that rate, the copy itself is the limit"
        )
    plan = TransferPlan(
        size_bytes=size_bytes,
        link_bytes_per_s=link_bytes_per_s,
        link_efficiency=rates.link_efficiency,
        effective_bytes_per_s=effective,
        capped_by_proxy=capped,
        transfer_s=transfer_s,
        assumptions=assumptions,
    )
    if workload_per_hour is None:
        assumptions.append(
            "no workload given: the link carries nothing but the copy; the WAL GIM writes "
            "during it, the catch-up on it and ICON's traffic are not counted (give --workload)"
        )
        return plan
    wal_rate = workload_per_hour / 3600 * rates.wal_bytes_per_event
    icon_rate = icon_bytes_per_s(workload_per_hour, rates)
    left = effective - icon_rate  # the link is one capacity: ICON's batches cross it too
    transfer_s = size_bytes / left if left > 0 else math.inf
    backlog = wal_rate * transfer_s
    catch_up = catch_up_seconds(backlog, left, wal_rate) if left > 0 else math.inf
    plan.transfer_s = transfer_s
    plan.workload_per_hour = workload_per_hour
    plan.wal_bytes_per_event = rates.wal_bytes_per_event
    plan.wal_bytes_per_s = wal_rate
    plan.wal_during_transfer_bytes = backlog
    plan.icon_bytes_per_s = icon_rate
    plan.copy_bytes_per_s = max(0.0, left)
    plan.catch_up_s = catch_up
    plan.total_s = transfer_s + catch_up
    if icon_rate:
        assumptions.append(
            f"the link is one capacity: ICON's writes across it take {format_rate(icon_rate)}"
            f" ({rates.icon_wire_bytes_per_event:.0f} bytes per event plus"
            f" {rates.icon_wire_bytes_per_batch:.0f} per batch on the wire, measured {when},"
            " every event crossing once, the way the copy goes), and the WAL streaming to"
            " the new standby takes its own share; GIM's extraction answers go the other way"
        )
    assumptions.append(
        f"GIM keeps loading {format_count(workload_per_hour)} events/h throughout, each "
        f"writing {rates.wal_bytes_per_event:.0f} bytes of WAL (measured loading an Info Mart "
        f"the way GIM does, in batches of {rates.wal_batch or 'many'} events, {when}); smaller "
        "batches and full-page images after checkpoints write more per event at low rates"
    )
    assumptions.append(
        "the primary keeps all WAL from the start of the copy (a replication slot or "
        "pg_basebackup --wal-method stream), and the standby replays WAL as fast as it arrives"
    )
    if math.isinf(catch_up):
        assumptions.append(
            f"the workload writes WAL at {format_rate(wal_rate)} and ICON sends"
            f" {format_rate(icon_rate)}, together at least the {format_rate(effective)} the"
            " link delivers: the standby never catches up"
        )
    return plan


# --- rendering --------------------------------------------------------------------------------


def format_span(seconds: float) -> str:
    """`2h 26m`: the two largest units, rounded; a plan is not precise to the second."""
    if math.isinf(seconds):
        return "never"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return "under 1s"
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (name, size) in enumerate(units):
        if seconds >= size:
            if index == len(units) - 1:
                return f"{round(seconds)}s"
            small_name, small = units[index + 1]
            rounded = round(seconds / small) * small
            if index > 0 and rounded >= units[index - 1][1]:
                return format_span(rounded)  # 59m 59.7s is 1h, not 60m
            big, rest = divmod(rounded // small, size // small)
            return f"{big}{name} {rest}{small_name}" if rest else f"{big}{name}"
    raise AssertionError("unreachable")


def format_size(nbytes: float) -> str:
    """`1.00 TB`: decimal units, three significant digits."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.3g} {unit}" if value >= 100 else f"{value:#.3g} {unit}"
    return f"{nbytes:.0f} B"


def format_count(value: float) -> str:
    """`2,000`, `5,000,000`, `0.5`: a count as a person writes it."""
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:.3g}"


def format_rate(bytes_per_s: float) -> str:
    return f"{format_size(bytes_per_s)}/s"


def format_link(bytes_per_s: float) -> str:
    """A link the way it is sold, in bits per second, and in bytes per second."""
    bits = bytes_per_s * 8
    for unit, scale in (("Tbit/s", 1e12), ("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit} ({format_rate(bytes_per_s)})"
    return f"{bits:g} bit/s ({format_rate(bytes_per_s)})"


def render_plan(plan: TransferPlan) -> list[str]:
    """The plan as plain text lines: figures first, then what they rest on."""
    rows = [
        ("size", format_size(plan.size_bytes)),
        ("link", format_link(plan.link_bytes_per_s)),
        (
            "effective rate",
            f"{format_rate(plan.effective_bytes_per_s)}"
            + (
                " (capped at the measured copy rate)"
                if plan.capped_by_proxy
                else f" ({plan.link_efficiency:.0%} of the link)"
            ),
        ),
        ("base backup", format_span(plan.transfer_s)),
    ]
    if plan.workload_per_hour is not None:
        assert plan.wal_bytes_per_s is not None and plan.wal_during_transfer_bytes is not None
        assert plan.catch_up_s is not None and plan.total_s is not None
        rows += [
            (
                "workload",
                f"{format_count(plan.workload_per_hour)} events/h, "
                f"WAL {format_rate(plan.wal_bytes_per_s)}, "
                f"ICON {format_rate(plan.icon_bytes_per_s or 0.0)} across the link",
            ),
            ("WAL during backup", format_size(plan.wal_during_transfer_bytes)),
            ("catch-up", format_span(plan.catch_up_s)),
            ("total", format_span(plan.total_s)),
        ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines.append("assumptions:")
    lines += [f"  - {text}" for text in plan.assumptions]
    return lines
