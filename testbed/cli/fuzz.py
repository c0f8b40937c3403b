"""`testbed fuzz`: generated timelines judged by the reference model and every check."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from testbed.cli.output import (
    err,
    home_option,
    out,
    user_errors,
    writable_folder,
)
from testbed.errors import TestbedError
from testbed.procs import stop_on_signals

TOPOLOGIES = ("active-standby", "active-active")
CLOCKS = ("realtime", "virtual")  # as testbed.scenarios.fuzz draws them (imported lazily)


@click.command()
@click.option("--runs", type=int, default=20, show_default=True, help="Scenarios to draw.")
@click.option(
    "--seed", type=int, default=1, show_default=True, help="The same seed draws the same."
)
@click.option(
    "--topology", default="active-standby", show_default=True, help=" or ".join(TOPOLOGIES)
)
@click.option(
    "--clock",
    default="virtual",
    show_default=True,
    help="realtime (1h = 1s to 2s) or virtual (the time jumps when the run is quiescent;"
    " WAN toxics act in scenario units)",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    callback=writable_folder,
    help="Where reproductions go (default: .testbed/fuzz/<time>).",
)
@click.option(
    "--shrink-budget",
    type=int,
    default=6,
    show_default=True,
    help="Runs spent shrinking each disagreement.",
)
@click.option(
    "--jobs",
    type=int,
    default=None,
    help="Scenarios judged at once (virtual time only: its verdicts do not depend on load;"
    " default: one per core, up to 4, on virtual time, else 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@home_option
@user_errors
def fuzz(
    runs: int,
    seed: int,
    topology: str,
    clock: str,
    out_dir: str | None,
    shrink_budget: int,
    jobs: int | None,
    as_json: bool,
    home: str | None,
) -> None:
    """Run random valid scenarios; exit 0 if the model and every check agree on all, 1 if
    one disagrees (shrunk to a small scenario file under --out), 2 on bad input."""
    from testbed.scenarios.fuzz import fuzz as campaign

    if runs < 1:
        raise TestbedError(f"--runs {runs}: draw at least one scenario")
    if shrink_budget < 0:
        raise TestbedError(f"--shrink-budget {shrink_budget} must not be negative")
    if topology not in TOPOLOGIES:
        raise TestbedError(f"--topology {topology!r} is not one of: {', '.join(TOPOLOGIES)}")
    if clock not in CLOCKS:
        raise TestbedError(f"--clock {clock!r} is not one of: {', '.join(CLOCKS)}")
    if jobs is None:
        from testbed.scenarios.batch import default_parallel

        jobs = default_parallel(runs) if clock == "virtual" else 1
    if jobs < 1:
        raise TestbedError(f"--jobs {jobs}: judge at least one scenario at a time")
    if jobs > 1 and clock != "virtual":
        raise TestbedError(
            f"--jobs {jobs} needs --clock virtual: on the realtime clock runs that share the"
            " machine move each other's edges"
        )
    folder = Path(out_dir) if out_dir else Path(".testbed/fuzz") / time.strftime("%Y%m%d-%H%M%S")
    stop_on_signals()
    with Progress(
        TextColumn("fuzz {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(topology, total=runs)

        def progress(index: int, name: str) -> None:
            bar.update(task, completed=index, description=f"{topology}: {name}")

        result = campaign(
            runs, seed, topology, folder, home, shrink_budget, progress, clock=clock, jobs=jobs
        )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        out.print(
            f"{result.runs} runs, {result.agreed} agreed, {result.disagreed} disagreed;"
            f" tolerance at most {result.tolerance_s_max:.0f}s; {result.wall_s:.0f}s",
            highlight=False,
        )
        for repro in result.reproductions:
            out.print(f"reproduction: testbed run {repro}", highlight=False)
    sys.exit(1 if result.disagreed else 0)
