"""`testbed list`, `run` and `report`: the scenario catalog, scenarios played and judged,
and a finished run's reports re-made from its folder."""

from __future__ import annotations

import json
import sys
from typing import Any

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
) -> None:
    """Run scenarios; exit 0 if every check passes, 1 if one fails, 2 on bad input."""
    import time
    from pathlib import Path

    from rich.progress import BarColumn, Progress, TextColumn

    from testbed.scenarios.engine import ScenarioRun
    from testbed.scenarios.spec import catalog, load_scenario
    from testbed.verdict.report import print_summary, write_reports

    names = list(scenarios)
    if every:
        names += list(catalog())
    if not names:
        raise TestbedError("name a scenario (see testbed list) or use --all")
    loaded = [load_scenario(name, clock) for name in names]  # all checked before any runs
    stop_on_signals()
    failed = skipped = 0
    reports = []
    for scenario in loaded:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir) if out_dir else Path(".testbed/reports")
        out_path = (
            base / scenario.name
            if out_dir and len(loaded) > 1
            else (base if out_dir else base / f"{scenario.name}-{stamp}")
        )
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

            try:
                ScenarioRun(
                    scenario,
                    out_path,
                    home=home,
                    seed=seed,
                    replay=Path(replay) if replay else None,
                    progress=progress,
                    backend=backend,
                    toxiproxy_image=toxiproxy_image,
                ).run()
            except CannotRunHere as exc:
                if len(loaded) == 1:
                    raise
                err.print(f"{scenario.name}: skipped: {exc}", highlight=False, soft_wrap=True)
                skipped += 1
                continue
        outcome = write_reports(out_path)
        failed += not outcome.passed
        reports.append(outcome.to_json())
        if not as_json:
            print_summary(outcome, out_path, out)
    if as_json:
        click.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    # A failed check outranks a scenario this backend cannot run (2, as for bad input).
    sys.exit(1 if failed else 2 if skipped else 0)


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
