"""`testbed list`, `run` and `report`: the scenario catalog, scenarios played and judged,
and a finished run's reports re-made from its folder."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from testbed.backends.choose import BACKENDS
from testbed.cli.output import (
    err,
    home_option,
    out,
    toxiproxy_image_option,
    user_errors,
    writable_folder,
)
from testbed.errors import CannotRunHere, TestbedError
from testbed.procs import stop_on_signals

if TYPE_CHECKING:  # imported where used: the command line starts without them
    from testbed.scenarios.batch import Job
    from testbed.scenarios.spec import Scenario
    from testbed.verdict.checks import Outcome

    Result = Outcome | CannotRunHere


@click.command("list")
def list_scenarios() -> None:
    """The scenario catalog: name and description."""
    import yaml

    from testbed.scenarios.spec import catalog

    table = Table(title="scenarios", title_justify="left")
    table.add_column("name")
    table.add_column("description", overflow="fold")
    for name, path in catalog().items():
        try:
            description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except Exception as exc:  # a broken file still shows up, with why
            description = f"(unreadable: {exc})"
        table.add_row(name, str(description))
    out.print(table)


@click.command()
@click.argument("scenarios", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Run the whole catalog.")
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True)
@toxiproxy_image_option
@click.option("--seed", type=int, default=None, help="Seed for chaos steps (overrides the file).")
@click.option(
    "--clock",
    default=None,
    help="`virtual` or a realtime clock such as `1h = 1s` (overrides the file's): realtime"
    " for the swarm and compose backends and --toxiproxy-image.",
)
@click.option(
    "--jobs",
    type=int,
    default=None,
    help="Scenarios run at once (default: one per core, up to 4, when every one keeps"
    " virtual time on the local or docker backend; otherwise 1).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    callback=writable_folder,
    help="Where reports go (default: .testbed/reports/<scenario>-<time>).",
)
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A history.jsonl whose chaos schedule to replay exactly.",
)
@home_option
@user_errors
def run(
    scenarios: tuple[str, ...],
    every: bool,
    backend: str,
    seed: int | None,
    out_dir: str | None,
    as_json: bool,
    replay: str | None,
    home: str | None,
    toxiproxy_image: str | None,
    clock: str | None,
    jobs: int | None,
) -> None:
    """Run scenarios; exit 0 if every check passes, 1 if one fails, 2 on bad input."""
    import time
    from pathlib import Path

    from testbed.scenarios.batch import Job, default_jobs
    from testbed.scenarios.spec import catalog, load_scenario
    from testbed.vclock.engine_clock import VIRTUAL_FACTOR

    names = list(scenarios)
    if every:
        names += list(catalog())
    if not names:
        raise TestbedError("name a scenario (see testbed list) or use --all")
    loaded = [load_scenario(name, clock) for name in names]  # all checked before any runs
    if jobs is None:
        jobs = default_jobs(loaded, backend) if not toxiproxy_image else 1
    elif jobs < 1:
        raise TestbedError(f"--jobs {jobs}: run at least one scenario at a time")
    elif jobs > 1 and any(s.factor != VIRTUAL_FACTOR for s in loaded):
        raise TestbedError(
            f"--jobs {jobs} needs virtual time for every scenario: on the realtime clock runs"
            " that share the machine move each other's edges (--clock virtual)"
        )
    options = {
        "home": home,
        "seed": seed,
        "replay": Path(replay) if replay else None,
        "backend": backend,
        "toxiproxy_image": toxiproxy_image,
    }
    base = Path(out_dir) if out_dir else Path(".testbed/reports")
    batch: list[Job] = []
    for name, scenario in zip(names, loaded, strict=True):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_path = (
            base / scenario.name
            if out_dir and len(loaded) > 1
            else (base if out_dir else base / f"{scenario.name}-{stamp}")
        )
        taken = {job.out for job in batch}
        twin, first = 1, out_path
        while out_path in taken:  # the same scenario twice: a folder each
            twin += 1
            out_path = first.with_name(f"{first.name}~{twin}")
        batch.append(Job(scenario.name, name, clock, out_path, options))
    stop_on_signals()
    outcomes = _one_at_a_time(batch, loaded) if jobs == 1 else _at_once(batch, jobs)
    failed = skipped = 0
    reports = []
    for job, outcome in outcomes:
        if isinstance(outcome, CannotRunHere):
            if len(loaded) == 1:
                raise outcome
            err.print(f"{job.name}: skipped: {outcome}", highlight=False, soft_wrap=True)
            skipped += 1
            continue
        failed += not outcome.passed
        reports.append(outcome.to_json())
        if not as_json:
            from testbed.verdict.report import print_summary

            print_summary(outcome, job.out, out)
    if as_json:
        click.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    # A failed check outranks a scenario this backend cannot run (2, as for bad input).
    sys.exit(1 if failed else 2 if skipped else 0)


def _one_at_a_time(batch: list[Job], loaded: list[Scenario]) -> Iterator[tuple[Job, Result]]:
    """Each run with a bar of its own scenario time."""
    from rich.progress import BarColumn, Progress, TextColumn

    from testbed.scenarios.batch import run_job

    for job, scenario in zip(batch, loaded, strict=True):
        end = max([s.at for s in scenario.steps] + [0.0])
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("t={task.completed:.1f}h"),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task(scenario.name, total=max(end / 3600, 0.01))

            def progress(
                t: float, message: str, task: Any = task, bar: Any = bar, name: str = scenario.name
            ) -> None:
                bar.update(task, completed=max(t, 0) / 3600, description=f"{name}: {message[:60]}")

            outcome = run_job(job, progress)
        yield job, outcome


def _at_once(batch: list[Job], jobs: int) -> Iterator[tuple[Job, Result]]:
    """`jobs` runs at a time, each in an interpreter of its own; results in file order."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from testbed.scenarios.batch import run_many

    with Progress(
        TextColumn(f"{{task.description}} ({jobs} at a time)"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("scenarios", total=len(batch))
        for job, outcome in run_many(batch, jobs):
            bar.update(task, advance=1)
            yield job, outcome


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@user_errors
def report(directory: str, as_json: bool) -> None:
    """Re-make the reports of a finished run from its folder."""
    from pathlib import Path

    from testbed.verdict.report import print_summary, write_reports

    outcome = write_reports(Path(directory))
    if as_json:
        click.echo(json.dumps(outcome.to_json(), indent=2))
    else:
        print_summary(outcome, Path(directory), out)
    sys.exit(0 if outcome.passed else 1)
