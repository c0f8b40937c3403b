"""The verdict in plain words, one paragraph: what a person reads before any table.

"Site 2 lost 1,813 events, 3h of data (1h to 4h), as the stuck-threshold rule predicts;
nothing doubled." It is built from the same figures and checks as the tables, so it can
never say more than they do.
"""

from __future__ import annotations

from typing import Any

from testbed.clock import format_duration
from testbed.verdict.checks import Outcome


def verdict_paragraph(outcome: Outcome) -> str:
    f = outcome.figures
    checks = {c.name: c for c in outcome.checks}
    loss_ok = checks["loss"].passed if "loss" in checks else None
    sentences = []
    lost = {site: n for site, n in (f.get("lost_events") or {}).items() if n}
    if lost:
        parts = [_site_loss(site, n, f, bool(loss_ok)) for site, n in sorted(lost.items())]
        sentences.append("; ".join(parts))
    elif loss_ok is False:
        sentences.append("No site lost anything")
    else:
        sentences.append("No site lost anything, as the rules predict")
    duplicates = int(f.get("duplicates") or 0)
    sentences[-1] += "; nothing doubled" if not duplicates else f"; {duplicates:,} events doubled"
    failed = [c.name for c in outcome.checks if not c.passed and c.name != "loss"]
    text = sentences[0] + "."
    if loss_ok is False:
        text += f" The loss check failed: {checks['loss'].message}."
    if failed:
        text += f" Failed: {', '.join(failed)}."
    elif outcome.passed:
        text += " Every check passed."
    return text[0].upper() + text[1:]


def _site_loss(site: str, count: int, f: dict[str, Any], as_predicted: bool) -> str:
    windows = (f.get("predicted_windows") or {}).get(site) or []
    label = site.replace("site", "site ") if site.startswith("site") else site
    at_disaster = sum(
        c.get("lost", 0) for c in f.get("disaster_census") or [] if c.get("site") == site
    )
    if not windows:
        if at_disaster:
            why = ", as the census of the surviving stores predicts" if as_predicted else ""
            return f"{label} lost {count:,} events in the disaster (what no store kept){why}"
        why = ", which the rules leave open (see the prediction's notes)" if as_predicted else ""
        return f"{label} lost {count:,} events{why}"
    span = sum(end - start for start, end in windows)
    where = ", ".join(f"{_minutes(a)} to {_minutes(b)}" for a, b in windows)
    why = ", as the stuck-threshold rule predicts" if as_predicted else ""
    return f"{label} lost {count:,} events, {_minutes(span)} of data ({where}){why}"


def _minutes(seconds: float) -> str:
    """To the minute: a paragraph for people, the report's figures keep the seconds."""
    return format_duration(round(seconds / 60) * 60)
