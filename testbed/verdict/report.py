"""Reports of a scenario run: `report.json` for programs, a table for the terminal, and
`report.html` with a timeline plot for people, all from the run's folder."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from testbed.clock import format_duration
from testbed.history import of_kind, read_history, read_json_lines
from testbed.verdict.checks import Outcome, evaluate
from testbed.verdict.summary import verdict_paragraph

HOUR = 3600.0


def write_reports(out: Path) -> Outcome:
    outcome = evaluate(out)
    (out / "report.json").write_text(json.dumps(outcome.to_json(), indent=2))
    (out / "report.html").write_text(_html(out, outcome), encoding="utf-8")
    return outcome


def print_summary(outcome: Outcome, out: Path, console: Console) -> None:
    verdict = "[bold green]PASS[/]" if outcome.passed else "[bold red]FAIL[/]"
    table = Table(title=f"{outcome.scenario}: {verdict}", title_justify="left")
    for column in ("check", "result", "figure"):
        table.add_column(column, overflow="fold")
    for check in outcome.checks:
        table.add_row(
            check.name, "[green]pass[/]" if check.passed else "[red]fail[/]", check.message
        )
    console.print(table)
    f = outcome.figures
    by_infomart = f.get("by_infomart") or {}
    if len(by_infomart) > 1:  # active-active: each Info Mart's own loss and prediction
        lost = "; ".join(f"{name} {_lost_and_predicted(im)}" for name, im in by_infomart.items())
        duplicates = sum(int(im.get("duplicates") or 0) for im in by_infomart.values())
    else:
        lost, duplicates = _lost_and_predicted(f), f["duplicates"]
    console.print(
        f"lost {lost}, duplicates {duplicates}, rto {_h(f['rto_s'])},"
        f" rpo {_h(f['rpo_s'])}; report: {out}",
        highlight=False,
    )
    console.print(_tolerance_line(f), highlight=False)
    for line in _either_lines(f):
        console.print(line, highlight=False)
    for toxic in f.get("wan_toxics") or []:
        console.print(f"WAN at {_at(toxic['at'])}: {toxic['text']}", highlight=False)
    # Last, so a terminal's screen ends with the answer.
    console.print(verdict_paragraph(outcome), highlight=False)


def _lost_and_predicted(f: dict[str, Any]) -> str:
    """`{'site1': 0, 'site2': 1813} (predicted site1: 0, site2: 1790-1830)`."""
    ranges = f.get("predicted_lost_range") or {
        site: [n, n] for site, n in f["predicted_lost_events"].items()
    }
    predicted = ", ".join(
        f"{site}: {low}" if low == high else f"{site}: {low}-{high}"
        for site, (low, high) in ranges.items()
    )
    return f"{f['lost_events']} (predicted {predicted})"


def _infomart_table(figures: dict[str, Any]) -> str:
    """Active-active: each Info Mart's loss beside its own prediction, a row per site."""
    by_infomart = figures.get("by_infomart") or {}
    if len(by_infomart) < 2:
        return ""
    rows = []
    for name, im in by_infomart.items():
        for site, lost in im["lost_events"].items():
            low, high = im["predicted_lost_range"][site]
            windows = ", ".join(
                f"{format_duration(a)} to {format_duration(b)}"
                for a, b in im["predicted_windows"].get(site) or []
            )
            verdict = {True: "as predicted", False: "FAIL", None: "-"}[im.get("as_predicted")]
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(site)}</td><td>{lost:,}</td>"
                f"<td>{low:,}{'' if low == high else f' to {high:,}'}</td>"
                f"<td>{html.escape(windows or '-')}</td>"
                f"<td>{html.escape(str(im.get('loss_check') or '-'))}: {verdict}</td></tr>"
            )
    return (
        "<h2>Loss per Info Mart</h2><p>Each GIM fills its own Info Mart and judges stuck"
        " sites on its own: each Info Mart against its own prediction.</p>"
        "<table><tr><th>Info Mart</th><th>site</th><th>lost</th><th>predicted</th>"
        "<th>predicted windows</th><th>check</th></tr>" + "".join(rows) + "</table>"
    )


def _either_lines(f: dict[str, Any]) -> list[str]:
    """What the prediction leaves open, per site with a share (per Info Mart in
    active-active), its bands named: "either way: site2 5.4% (edge tolerance 3.7%, ...)"."""
    by_infomart = f.get("by_infomart") or {}
    answers = by_infomart.items() if len(by_infomart) > 1 else [(None, f)]
    lines = []
    for name, figures in answers:
        parts = []
        for site, share in (figures.get("either_share") or {}).items():
            if not share:
                continue
            bands = (figures.get("either_bands") or {}).get(site) or {}
            named = ", ".join(
                f"{why.split(' (')[0]} {part:.1%}"
                for why, part in sorted(bands.items(), key=lambda b: -b[1])
            )
            parts.append(f"{site} {share:.1%} ({named})")
        if parts:
            lines.append(f"either way{f' in {name}' if name else ''}: " + "; ".join(parts))
    return lines


def _either_table(f: dict[str, Any]) -> str:
    lines = _either_lines(f)
    if not lines:
        return "<p>Every event has a definite prediction: lost or kept.</p>"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (
        "<h2>What may go either way</h2><p>Events the prediction leaves open, as a share of"
        " each site's events, and the bands that leave them open (an event in two bands"
        f" counts in both).</p><ul>{items}</ul>"
    )


def _at(scenario_time: float | None) -> str:
    return "?" if scenario_time is None else format_duration(scenario_time)


def _tolerance_line(f: dict[str, Any]) -> str:
    share = f.get("tolerance_share_of_threshold")
    slowest = max(f.get("step_lags") or [], key=lambda s: s["lag_s"], default=None)
    return (
        ("on virtual time, " if f.get("clock") == "virtual" else "")
        + f"edge tolerance {format_duration(f['tolerance_s'])}"
        + (f" ({share:.1%} of the threshold)" if share is not None else "")
        + (f": {f['tolerance_formula']}" if f.get("tolerance_formula") else "")
        + (
            f"; slowest step to take effect: {slowest['verb']} at"
            f" {format_duration(slowest['at'])}, {format_duration(slowest['lag_s'])}"
            + (
                f" ({slowest['lag_wall_s'] * 1000:.0f} ms wall)"
                if slowest["lag_wall_s"] is not None
                else ""
            )
            if slowest
            else ""
        )
    )


def _h(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / HOUR:.2f}h"


def _plot(out: Path, outcome: Outcome) -> str:
    """The timeline as a base64 PNG: completeness, boundary, queues, faults, losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(out / "history.jsonl")
    samples = list(of_kind(history, "sample"))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    times = [s["t"] / HOUR for s in samples]
    sites = sorted({site for s in samples for site in (s.get("complete_to") or {})})
    for site in sites:
        lag = [
            (
                (s["t"] - s["complete_to"][site]) / HOUR
                if (s.get("complete_to") or {}).get(site) is not None
                else None
            )
            for s in samples
        ]
        top.plot(times, lag, label=f"{site} completeness lag")
    boundary_lag = [
        (
            (s["t"] - s["transform_boundary"]) / HOUR
            if s.get("transform_boundary") is not None
            else None
        )
        for s in samples
    ]
    top.plot(times, boundary_lag, "k--", label="reporting delay (now - transform boundary)")
    run = next(of_kind(history, "run"), {})
    threshold = (run.get("settings") or {}).get("extract_data_stuck_threshold")
    if threshold:
        top.axhline(
            float(threshold) / HOUR, color="tab:orange", ls="-.", lw=1, label="stuck threshold"
        )
    top.set_ylabel("scenario hours behind")
    icons = sorted({name for s in samples for name in (s.get("queued_events") or {})})
    for name in icons:
        bottom.plot(
            times,
            [(s.get("queued_events") or {}).get(name) for s in samples],
            label=f"{name} queue",
        )
    bottom.set_ylabel("queued events")
    bottom.set_xlabel("scenario time (hours)")
    for start, end, label in _fault_spans(history):
        for axis in (top, bottom):
            axis.axvspan(start / HOUR, end / HOUR, color="tab:red", alpha=0.12)
        top.annotate(label, (start / HOUR, 0), fontsize=7, rotation=90, va="bottom")
    for entry in (e for e in history if e["kind"] in ("dr", "dr-forced")):
        forced = entry["kind"] == "dr-forced"
        for axis in (top, bottom):
            axis.axvline(entry["t"] / HOUR, color="tab:purple", ls=":" if forced else "--", lw=1)
        label = f"{entry['procedure']} {entry.get('site') or entry.get('to') or ''}"
        top.annotate(
            label + (" (forced)" if forced else ""),
            (entry["t"] / HOUR, 0),
            fontsize=7,
            rotation=90,
            va="bottom",
            color="tab:purple",
        )
    _mark_steps(top, history)
    _mark_losses(top, out, outcome)
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="center right" if axis is top else "upper right")
    fig.suptitle(f"{outcome.scenario}: {'PASS' if outcome.passed else 'FAIL'}")
    # Fixed margins for the fixed figure size: tight_layout() measures every label by
    # drawing the figure once more, which was half the cost of every run's report.
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.93, hspace=0.06)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _mark_steps(axis: Any, history: list[dict[str, Any]]) -> None:
    """Every step of the timeline as a labelled tick along the top of the lag chart."""
    steps = [e for e in of_kind(history, "step") if e["step"]["verb"] != "settle"]
    if not steps:
        return
    xs = [e["t"] / HOUR for e in steps]
    axis.plot(
        xs,
        [1.0] * len(xs),
        "v",
        color="tab:blue",
        markersize=5,
        transform=axis.get_xaxis_transform(),
        clip_on=False,
        label="steps",
    )
    for entry, x in zip(steps, xs, strict=True):
        step = entry["step"]
        value = step["value"]
        target = "-".join(value) if isinstance(value, list) else (value or "")
        axis.annotate(
            f"{step['verb']} {target}".strip(),
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            rotation=90,
            va="top",
            ha="right",
            color="tab:blue",
        )


def _mark_losses(axis: Any, out: Path, outcome: Outcome) -> None:
    """Per site, a row for its predicted loss windows (a bar) and one just below for the
    events actually lost (crosses): a person sees at a glance whether they line up."""
    ledger = read_json_lines(out / "ledger.jsonl")
    facts = {row[0] for row in json.loads((out / "final.json").read_text())["facts"]}
    windows = outcome.figures.get("predicted_windows") or {}
    low, high = axis.get_ylim()
    row = 0.04 * (high - low)
    labelled = set()
    bottom = low
    shown = [s for s in sorted({e["site"] for e in ledger} | set(windows))]
    for index, site in enumerate(shown):
        lost = [e["ts"] / HOUR for e in ledger if e["site"] == site and e["id"] not in facts]
        if not lost and not windows.get(site):
            continue
        bar, crosses = -(2 * index + 1) * row, -(2 * index + 2) * row
        for start, end in windows.get(site, []):
            first = "window" not in labelled
            labelled.add("window")
            axis.plot(
                [start / HOUR, end / HOUR],
                [bar, bar],
                color="tab:green",
                lw=5,
                solid_capstyle="butt",
                label="predicted loss window" if first else None,
            )
        if lost:
            axis.plot(
                lost,
                [crosses] * len(lost),
                "rx",
                markersize=3,
                label=f"{site}: lost events ({len(lost)})",
            )
        axis.annotate(
            site, (0, bar), xycoords=("axes fraction", "data"), fontsize=7, va="center", ha="right"
        )
        bottom = min(bottom, crosses - row)
    axis.set_ylim(bottom, high)


WAN_FAULTS = ("partition", "latency", "bandwidth", "toxic")
PROCESS_FAULTS = ("kill", "stop", "pause")


def _fault_spans(history: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(start, end, label) of every fault: a WAN fault lasts until its link is healed, a
    process or server fault until its target is started or resumed."""
    spans, open_faults = [], {}
    end = max((e["t"] for e in history), default=0.0)
    for entry in of_kind(history, "step"):
        step = entry["step"]
        verb, options = step["verb"], step["options"]
        if verb in WAN_FAULTS:
            open_faults[(verb, "-".join(sorted(step["value"] or options["link"])))] = entry["t"]
        elif verb in PROCESS_FAULTS:
            open_faults[(verb, options.get("target", step["value"]))] = entry["t"]
        elif verb in ("heal", "start", "resume"):
            if verb == "heal":
                link = None if step["value"] == "all" else "-".join(sorted(step["value"]))
                closed = [k for k in open_faults if k[0] in WAN_FAULTS and link in (None, k[1])]
            else:
                target = options.get("target", step["value"])
                closed = [k for k in open_faults if k[0] in PROCESS_FAULTS and k[1] == target]
            for key in closed:
                spans.append((open_faults.pop(key), entry["t"], f"{key[0]} {key[1]}"))
    spans += [(start, end, f"{verb} {key}") for (verb, key), start in open_faults.items()]
    return spans


def _wan_list(figures: dict[str, Any]) -> str:
    """The WAN toxics in wall and scenario units (empty when the run applied none)."""
    toxics = figures.get("wan_toxics") or []
    if not toxics:
        return ""
    items = "".join(
        f"<li>at {html.escape(_at(t['at']))}: {html.escape(t['text'])}</li>" for t in toxics
    )
    return f"<h2>WAN toxics (wall units, and what they are in scenario time)</h2><ul>{items}</ul>"


def _html(out: Path, outcome: Outcome) -> str:
    rows = "".join(
        f"<tr class={'pass' if c.passed else 'fail'}><td>{html.escape(c.name)}</td>"
        f"<td>{'pass' if c.passed else 'FAIL'}</td><td>{html.escape(c.message)}</td></tr>"
        for c in outcome.checks
    )
    figures = html.escape(json.dumps(outcome.figures, indent=2))
    png = _plot(out, outcome)
    verdict = "PASS" if outcome.passed else "FAIL"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(outcome.scenario)}: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
tr.pass td:nth-child(2) {{ color: green; }} tr.fail td:nth-child(2) {{ color: red; }}
pre {{ background: #f6f6f6; padding: 1em; overflow: auto; }}
p.verdict {{ font-size: 1.15em; }}
</style></head><body>
<h1>{html.escape(outcome.scenario)}: {verdict}</h1>
<p class=verdict>{html.escape(verdict_paragraph(outcome))}</p>
<table><tr><th>check</th><th>result</th><th>figure</th></tr>{rows}</table>
{_infomart_table(outcome.figures)}
{_either_table(outcome.figures)}
<p>{html.escape(_tolerance_line(outcome.figures))}</p>
{_wan_list(outcome.figures)}
<h2>Timeline</h2>
<img alt="timeline" src="data:image/png;base64,{png}" style="max-width:100%">
<h2>Figures</h2><pre>{figures}</pre>
</body></html>
"""
