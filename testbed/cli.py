"""The `testbed` command.

Errors a user can fix are one line on stderr and exit code 2 (`TestbedError`); tracebacks
are for bugs only. Tables go to stdout, progress to stderr, so `--json` output pipes cleanly.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from testbed import procs
from testbed.backends.choose import BACKENDS
from testbed.backends.storage import STORAGES
from testbed.cli_dr import dr
from testbed.cli_plan import plan
from testbed.errors import TestbedError

# Piped output is read by programs and logs: do not wrap table rows at 80 columns there.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, log_path=False)


toxiproxy_image_option = click.option(
    "--toxiproxy-image",
    default=None,
    help="Docker backend: run this image (e.g. a real Toxiproxy) as the WAN proxy.",
)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn `TestbedError` into one line and its exit code; Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TestbedError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted; everything started was stopped")
            sys.exit(130)

    return wrapper


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C does: through the cleanup path."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder holding runs/ (default: $TESTBED_HOME or ./.testbed).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bc-testbed")
def main() -> None:
    """Chaos testbed for two-site business-continuity reporting pipelines."""


@main.command()
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True)
@click.option(
    "--topology",
    default="active-standby",
    show_default=True,
    help="Built-in topology name (active-standby, active-active) or a topology file.",
)
@toxiproxy_image_option
@click.option("--json", "as_json", is_flag=True, help="Print the servers as JSON.")
@click.option("--detach", is_flag=True, help="Return and leave the servers running.")
@click.option("--once", is_flag=True, help="Start, check each server answers, stop.")
@click.option(
    "--storage",
    type=click.Choice(STORAGES),
    default=None,
    help="Server data in RAM (tmpfs) or on disk; default: $TESTBED_STORAGE or auto (RAM if room).",
)
@home_option
@user_errors
def up(
    backend: str,
    topology: str,
    as_json: bool,
    detach: bool,
    once: bool,
    storage: str | None,
    home: str | None,
    toxiproxy_image: str | None,
) -> None:
    """Start a topology and show its servers; Ctrl-C (or `testbed down`) stops it."""
    from testbed.backends.choose import open_backend
    from testbed.deployment import bring_up
    from testbed.topology import load_topology

    if detach and once:
        raise TestbedError("--detach and --once contradict each other; choose one")
    topo = load_topology(topology)
    _stop_on_signals()
    backend_run = open_backend(
        backend,
        home=home,
        keep=detach,
        owner="cli-detached" if detach else "cli-up",
        storage=storage,
        toxiproxy_image=toxiproxy_image,
    )
    left_running = False
    try:
        with err.status(f"starting {topo.name} ({len(topo.servers)} servers)..."):
            deployment = bring_up(topo, backend_run, progress=lambda m: err.log(m, highlight=False))
        backend_run.run.update(topology=topo.name, detached=detach)
        rows = deployment.rows()
        if as_json:
            click.echo(json.dumps([_json_row(topo, row) for row in rows], indent=2))
        else:
            _print_servers(f"run {backend_run.id}: {topo.name}", rows)
            _print_wan(deployment.wan_rows())
        if once:
            for server in deployment.servers.values():
                server.scalar("SELECT 1")
            err.print(f"all {len(rows)} servers answered; stopping")
        elif detach:
            left_running = True
            err.print(f"left running; stop with: testbed down {backend_run.id}")
        else:
            err.print("running; press Ctrl-C to stop")
            while True:
                signal.pause()
    finally:
        if not left_running:
            backend_run.close()


def _json_row(topo: Any, row: dict[str, Any]) -> dict[str, Any]:
    host, _, port = str(row["address"]).rpartition(":")
    spec = topo.server(row["name"])
    return {
        "site": row["site"],
        "role": spec.role,
        "name": row["name"],
        "host": host,
        "port": int(port),
        "pid": row["pid"],
    }


def _print_servers(title: str, rows: list[dict[str, Any]], states: bool = False) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("site", "role", "name", "host:port", "pid", *(("state",) if states else ())):
        table.add_column(column)
    for row in rows:
        cells = [row["site"], row["role"], row["name"], row["address"], str(row["pid"] or "-")]
        if states:
            cells.append(row["state"])
        table.add_row(*cells)
    out.print(table)


def _print_wan(rows: list[dict[str, str]]) -> None:
    if not rows:
        return
    table = Table(
        title="WAN (every cross-site connection goes through a proxy)", title_justify="left"
    )
    for column in ("route", "from", "to", "purpose", "proxy", "upstream"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(row[c] for c in ("route", "from", "to", "purpose", "proxy", "upstream")))
    out.print(table)


@main.group()
def proxy() -> None:
    """The Toxiproxy-compatible WAN proxy."""


@proxy.command(
    "serve",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def proxy_serve(args: tuple[str, ...]) -> None:
    """Run a proxy server: [-host H] [-port P] [-config FILE] (Toxiproxy's flags)."""
    from testbed.netfault.server import main as serve

    serve(list(args))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@home_option
@user_errors
def status(as_json: bool, home: str | None) -> None:
    """Show every run under the home folder and the state of its servers."""
    from testbed.backends import runs

    report = []
    for run in runs.list_runs(runs.home_dir(home)):
        servers = []
        for record in run.manifest.servers.values():
            if record.pid and procs.is_ours(record.pid, record.datadir):
                state = "paused" if procs.paused(record.pid) else "running"
            else:
                state = "stopped"
            servers.append(
                {
                    "site": record.site,
                    "role": record.role,
                    "name": record.name,
                    "host": record.host,
                    "port": record.port,
                    "pid": record.pid if state != "stopped" else None,
                    "state": state,
                }
            )
        processes = [
            {
                "name": p.name,
                "pid": p.pid,
                "url": p.address,
                "running": procs.is_ours(p.pid, p.marker),
            }
            for p in run.manifest.processes.values()
        ]
        report.append(
            {
                "run": run.id,
                "topology": run.manifest.topology,
                "backend": run.manifest.backend,
                "detached": run.manifest.detached,
                "runner_alive": run.owner_alive(),
                "servers": servers,
                "processes": processes,
            }
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report:
        err.print("no runs")
        return
    for entry in report:
        runner = (
            "detached"
            if entry["detached"]
            else ("runner alive" if entry["runner_alive"] else "runner gone")
        )
        rows = [{**s, "address": f"{s['host']}:{s['port']}"} for s in entry["servers"]]
        _print_servers(f"run {entry['run']}: {entry['topology'] or '-'} ({runner})", rows, True)


@main.command()
@click.argument("run_id", required=False)
@click.option("--all", "every", is_flag=True, help="Stop every run, not only the newest.")
@click.option("--keep", is_flag=True, help="Keep the run folders (data and logs).")
@home_option
@user_errors
def down(run_id: str | None, every: bool, keep: bool, home: str | None) -> None:
    """Stop the servers of a run (the newest by default), even one whose runner crashed."""
    from testbed.backends import runs

    found = runs.list_runs(runs.home_dir(home))
    if run_id:
        targets = [r for r in found if r.id == run_id]
        if not targets:
            raise TestbedError(f"no run '{run_id}' under {runs.home_dir(home)}; see testbed status")
    else:
        targets = found if every else found[-1:]
    if not targets:
        err.print("no runs to stop")
        return
    for run in targets:
        stopped = runs.stop_run(run, keep=keep)
        if run.manifest.backend == "docker":
            stopped += _remove_containers(run.id)
        err.print(f"run {run.id}: stopped {len(stopped)} server(s)" + (", kept" if keep else ""))
    if every:
        swept = _remove_containers(None)  # also what crashed runs without a folder left
        if swept:
            err.print(f"removed {len(swept)} leftover container(s): {', '.join(swept)}")


def _remove_containers(run_id: str | None) -> list[str]:
    """The Docker objects of a run (of every run: None), when an engine answers."""
    from testbed.backends.docker import remove_run
    from testbed.backends.images import engine_client

    try:
        client = engine_client()
    except TestbedError:
        return []
    return remove_run(client, run_id)


@main.command()
@click.option("--topology", default="active-standby", show_default=True)
@click.option(
    "--out",
    "folder",
    type=click.Path(file_okay=False),
    default="compose",
    show_default=True,
    help="Folder for two-site.yml and wan.json.",
)
@user_errors
def compose(topology: str, folder: str) -> None:
    """Write the Docker Compose files of a long-lived environment for a topology."""
    from pathlib import Path

    from testbed.compose import write
    from testbed.topology import load_topology

    for path in write(load_topology(topology), Path(folder)):
        err.print(f"wrote {path}", highlight=False)


@main.group()
def images() -> None:
    """The docker backend's images (built locally; no registry needed)."""


@images.command("build")
@click.option(
    "--offline", "mode", flag_value="offline", help="Base: Debian packages (debootstrap)."
)
@click.option("--online", "mode", flag_value="online", help="Base: the official images.")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def images_build(mode: str | None, as_json: bool) -> None:
    """Build the postgres and proxy images; online (official bases already in the engine)
    or offline (a base from Debian's packages), chosen automatically unless told."""
    from testbed.backends import images as image_builder

    result = image_builder.build(mode or "auto", say=lambda m: err.print(m, highlight=False))
    if as_json:
        click.echo(json.dumps(result, indent=2))


@main.command("list")
def list_scenarios() -> None:
    """The scenario catalog: name and description."""
    from testbed.scenario_file import scenario_dirs

    table = Table(title="scenarios", title_justify="left")
    table.add_column("name")
    table.add_column("description", overflow="fold")
    seen = set()
    for directory in scenario_dirs():
        for path in sorted(directory.glob("*.yaml")):
            if path.stem in seen:
                continue
            seen.add(path.stem)
            try:
                import yaml

                description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
            except Exception as exc:  # a broken file still shows up, with why
                description = f"(unreadable: {exc})"
            table.add_row(path.stem, str(description))
    out.print(table)


@main.command()
@click.argument("scenarios", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Run the whole catalog.")
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True)
@toxiproxy_image_option
@click.option("--seed", type=int, default=None, help="Seed for chaos steps (overrides the file).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
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
) -> None:
    """Run scenarios; exit 0 if every check passes, 1 if one fails, 2 on bad input."""
    import time
    from pathlib import Path

    from rich.progress import BarColumn, Progress, TextColumn

    from testbed.report import print_summary, write_reports
    from testbed.scenario import ScenarioRun
    from testbed.scenario_file import load_scenario, scenario_dirs

    names = list(scenarios)
    if every:
        names += sorted({p.stem for d in scenario_dirs() for p in d.glob("*.yaml")})
    if not names:
        raise TestbedError("name a scenario (see testbed list) or use --all")
    loaded = [load_scenario(name) for name in names]  # every file checked before any runs
    _stop_on_signals()
    failed = 0
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
        outcome = write_reports(out_path)
        failed += not outcome.passed
        reports.append(outcome.to_json())
        if not as_json:
            print_summary(outcome, out_path, out)
    if as_json:
        click.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@user_errors
def report(directory: str, as_json: bool) -> None:
    """Re-make the reports of a finished run from its folder."""
    from pathlib import Path

    from testbed.report import print_summary, write_reports

    outcome = write_reports(Path(directory))
    if as_json:
        click.echo(json.dumps(outcome.to_json(), indent=2))
    else:
        print_summary(outcome, Path(directory), out)
    sys.exit(0 if outcome.passed else 1)


main.add_command(plan)
main.add_command(dr)

if __name__ == "__main__":
    main()
