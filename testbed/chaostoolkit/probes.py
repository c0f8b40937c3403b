"""The testbed's probes: where the environment is, the pipeline's figures, and the verdict
so far.

The verdict probes judge what has happened so far with the scenario engine's reference
model and checks, on the events reporting has caught up with (one still queued behind a
cut WAN is on its way, not lost). So "no unexplained loss" is a steady-state hypothesis
that holds before an outage and after it, however much the outage cost, as long as the
loss is exactly what the rules predict: `loss_as_predicted` with tolerance `true`, or
`unexplained_loss` with tolerance `0`.
"""

from __future__ import annotations

from typing import Any

from testbed.chaostoolkit.environment import current, user_errors
from testbed.errors import TestbedError
from testbed.verdict.checks import Check

LOSS_CHECKS = ("loss", "disaster-loss")  # and "loss:<infomart>" per Info Mart

__all__ = [
    "environment",
    "figures",
    "loss_as_predicted",
    "lost_events",
    "queued_events",
    "stuck_sites",
    "unexplained_loss",
    "verdict",
    "wan_residue",
]


@user_errors
def environment() -> dict[str, Any]:
    """The run's id and folder, its servers (site, role, address, pid) and WAN routes, and
    the scenario time."""
    return current().describe()


@user_errors
def figures() -> dict[str, Any]:
    """The pipeline's figures now: queue depths, high-water marks, transform boundary,
    stuck sites, each component's state (what the run's history samples)."""
    return current().pipeline.figures()


@user_errors
def queued_events(icon: str | None = None) -> int:
    """Events waiting in ICON queues: one ICON's, or all of them."""
    queued = current().pipeline.figures()["queued_events"]
    if icon is not None and icon not in queued:
        raise TestbedError(f"unknown ICON '{icon}' (ICONs: {', '.join(sorted(queued))})")
    return sum(n or 0 for name, n in queued.items() if icon is None or name == icon)


@user_errors
def stuck_sites() -> list[str]:
    """The sites the GIM in service has left behind as stuck (lagging past the threshold)."""
    return sorted(current().pipeline.figures()["stuck_sites"] or [])


@user_errors
def wan_residue() -> list[str]:
    """Every partition and toxic applied to the WAN now, one line each ([] when whole)."""
    wan = current().deployment.wan
    return wan.residue() if wan is not None else []


@user_errors
def verdict() -> dict[str, Any]:
    """Every check so far (its result and message) and whether all pass, with the lost
    and predicted events per site and the scenario time judged up to (`judged_before`)."""
    outcome = current().judge()
    f = outcome.figures
    return {
        "passed": outcome.passed,
        "checks": {c.name: {"passed": c.passed, "message": c.message} for c in outcome.checks},
        "judged_before": f["judged_before"],
        "lost_events": f["lost_events"],
        "predicted_lost_range": f["predicted_lost_range"],
        "tolerance_s": f["tolerance_s"],
    }


@user_errors
def loss_as_predicted() -> bool:
    """Whether the events lost so far are exactly those the rules predict: none lost that
    they keep, none kept that they lose (every loss check: per Info Mart in active-active,
    and a disaster's census)."""
    return all(c.passed for c in _loss_checks())


@user_errors
def unexplained_loss() -> int:
    """How many events were lost so far that the rules do not predict."""
    return sum(int(c.figures.get("unpredicted", 0)) for c in _loss_checks())


@user_errors
def lost_events(site: str | None = None) -> int:
    """How many events were lost so far, explained or not: one site's, or all."""
    lost = current().judge().figures["lost_events"]
    if site is not None and site not in lost:
        raise TestbedError(f"unknown site '{site}' (sites: {', '.join(lost)})")
    return sum(n for name, n in lost.items() if site is None or name == site)


def _loss_checks() -> list[Check]:
    checks = current().judge().checks
    return [c for c in checks if c.name in LOSS_CHECKS or c.name.startswith("loss:")]
