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
    by_infomart = f.get("by_infomart") or {}
    if len(by_infomart) > 1:
        # Active-active: each Info Mart is its own answer, each said in full.
        sentences = [
            f"{_infomart_label(name)}: {_loss_sentence(figures, f, figures.get('as_predicted'))}"
            for name, figures in by_infomart.items()
        ]
        duplicates = sum(int(figures.get("duplicates") or 0) for figures in by_infomart.values())
    else:
        sentences = [_loss_sentence(f, f, loss_ok)]
        duplicates = int(f.get("duplicates") or 0)
    sentences[-1] += "; nothing doubled" if not duplicates else f"; {duplicates:,} events doubled"
    failed = [
        c.name
        for c in outcome.checks
        if not c.passed and c.name != "loss" and not c.name.startswith("loss:")
    ]
    sentences += _waiting_sentences(f) + _recovered_sentences(f)
    text = ". ".join(s[0].upper() + s[1:] for s in sentences) + "."
    for check in outcome.checks:
        if (check.name == "loss" or check.name.startswith("loss:")) and not check.passed:
            text += f" The {check.name} check failed: {check.message}."
    if failed:
        text += f" Failed: {', '.join(failed)}."
    elif outcome.passed:
        text += " Every check passed."
    return text


def _loss_sentence(own: dict[str, Any], run: dict[str, Any], as_predicted: bool | None) -> str:
    """What one Info Mart lost, per site. `own` holds its loss and predicted windows; `run`
    the run's figures (the disaster census is the run's, whichever Info Mart reports)."""
    lost = {site: n for site, n in (own.get("lost_events") or {}).items() if n}
    if lost:
        windows = own.get("predicted_windows") or {}
        census = run.get("disaster_census") or []
        return "; ".join(
            _site_loss(site, n, windows.get(site) or [], census, bool(as_predicted))
            for site, n in sorted(lost.items())
        )
    if as_predicted is False:
        return "no site lost anything"
    return "no site lost anything, as the rules predict"


def _waiting_sentences(f: dict[str, Any]) -> list[str]:
    """What waits for a procedure, and which one releases it."""
    failed_at = {
        p.get("site"): p.get("t")
        for p in f.get("procedures") or []
        if p.get("procedure") == "fail-site"
    }
    sentences = []
    for site, count in sorted((f.get("waiting_events") or {}).items()):
        label = _site_label(site)
        when = failed_at.get(site)
        at = f" at {_minutes(float(when))}" if when is not None else ""
        sentences.append(
            f"{label} was lost{at} and is not retired: {count:,} of its events wait;"
            f" `{f.get('waiting_release') or 'activate-gim'}` releases them"
        )
    return sentences


def _recovered_sentences(f: dict[str, Any]) -> list[str]:
    """What a recovered site's old disks gave back of what its census counted lost."""
    sentences = []
    for site, count in sorted((f.get("recovered_events") or {}).items()):
        if count:
            label = _site_label(site)
            sentences.append(
                f"{label} was recovered on its old disks: {count:,} events its census counted"
                " lost came back from them (recovered, counted apart)"
            )
    return sentences


def _site_label(site: str) -> str:
    return site.replace("site", "site ") if site.startswith("site") else site


def _infomart_label(name: str) -> str:
    return name.replace("infomart", "Info Mart ") if name.startswith("infomart") else name


def _site_loss(
    site: str, count: int, windows: list, census: list[dict[str, Any]], as_predicted: bool
) -> str:
    label = _site_label(site)
    at_disaster = sum(c.get("lost", 0) for c in census if c.get("site") == site)
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
