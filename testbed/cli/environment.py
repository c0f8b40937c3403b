"""`testbed up`, `status` and `down`: a topology's servers brought up, shown and stopped,
including what a crashed runner left behind."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from testbed import ports, procs
from testbed.backends.choose import BACKENDS
from testbed.backends.storage import STORAGES
from testbed.cli.output import (
    err,
    home_option,
    print_passfile,
    print_servers,
    print_wan,
    toxiproxy_image_option,
    user_errors,
)
from testbed.credentials import PASSFILE_NAME
from testbed.errors import TestbedError


@click.command()
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
    procs.stop_on_signals()
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
            print_servers(f"run {backend_run.id}: {topo.name}", rows)
            print_wan(deployment.wan_rows())
            print_passfile(rows)
        if once:
            for server in deployment.servers.values():
                server.scalar("SELECT 1")
            err.print(f"all {len(rows)} servers answered; stopping")
        elif detach:
            left_running = True
            ports.hand_over(backend_run.run.path)
            err.print(f"left running; stop with: testbed down {backend_run.id}")
        else:
            err.print("running; press Ctrl-C to stop")
            while True:
                # Not `signal.pause()`: a signal the kernel hands to another thread of this
                # process (a pool's worker, a timer) would leave it waiting for ever, while
                # a short sleep returns and lets the main thread run the handler.
                time.sleep(0.2)
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
        "dsn": row["dsn"],  # names the run's password file; the password is in no output
        "passfile": row["passfile"],
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@home_option
@user_errors
def status(as_json: bool, home: str | None) -> None:
    """Show every run under the home folder and the state of its servers."""
    from testbed.backends import runs

    report: list[dict[str, Any]] = []
    for run in runs.list_runs(runs.home_dir(home)):
        passfile = run.data_root / PASSFILE_NAME
        servers = []
        for record in run.manifest.servers.values():
            ours = record.pid and procs.is_ours(record.pid, record.datadir)
            state = procs.run_state(record.pid) if ours else "stopped"
            servers.append(
                {
                    "site": record.site,
                    "role": record.role,
                    "name": record.name,
                    "host": record.host,
                    "port": record.port,
                    "pid": record.pid if state != "stopped" else None,
                    "state": state,
                    "passfile": str(passfile) if passfile.exists() else None,
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
        print_servers(f"run {entry['run']}: {entry['topology'] or '-'} ({runner})", rows, True)


@click.command()
@click.argument("run_id", required=False)
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Stop every run, not only the newest: under the home, and every run of yours on"
    " this machine under any other (a benchmark's, a test session's).",
)
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
    if every:  # and the runs of other homes (a killed benchmark's, a test session's)
        here = {run.path.absolute() for run in targets}
        targets += [r for r in runs.registered_runs() if r.path.absolute() not in here]
    if not targets:
        err.print("no runs to stop")
        return
    for run in targets:
        changes = _swarm_changes(run.path) if run.manifest.backend == "swarm" else {}
        stopped = runs.stop_run(run, keep=keep)
        if run.manifest.backend in ("docker", "swarm"):
            stopped += _remove_containers(run.id, changes)
        err.print(f"run {run.id}: stopped {len(stopped)} server(s)" + (", kept" if keep else ""))
    if every:
        swept = _remove_containers(None)  # also what crashed runs without a folder left
        if swept:
            err.print(f"removed {len(swept)} leftover container(s): {', '.join(swept)}")


def _swarm_changes(folder: Path) -> dict[str, Any]:
    """What a swarm run changed in the swarm (made it, labelled nodes), to undo it."""
    from testbed.backends.swarm import SWARM_RECORD

    try:
        return dict(json.loads((folder / SWARM_RECORD).read_text()))
    except (OSError, ValueError):
        return {}


def _remove_containers(run_id: str | None, changes: dict[str, Any] | None = None) -> list[str]:
    """The Docker objects of a run (of every run: None), when an engine answers: containers,
    and a swarm run's services; then networks and volumes."""
    from testbed.backends.docker import remove_run
    from testbed.backends.images import engine_client
    from testbed.backends.swarm import remove_swarm_run

    try:
        client = engine_client()
    except TestbedError:
        return []
    if run_id is None:  # also the docker-in-docker nodes of a multi-node run
        from testbed.backends import multinode

        multinode.remove(client)
    return remove_swarm_run(client, run_id, changes) + remove_run(client, run_id)
