"""`testbed dr`: the operator's procedures on a running topology (`testbed up --detach`).

Each command attaches to the run's servers and WAN proxy, does one procedure, saves what
changed (replication roles, failed and added sites) in the run's manifest for the next
command, and prints what it did. A refused precondition is one line and exit code 1.

`testbed up` runs servers only: procedures that need the pipeline (`activate-gim`, the
census of `fail-site`, calls moving to the surviving site) happen in scenario runs.
"""

from __future__ import annotations

import json
from typing import Any

import click

from testbed.cli.output import err, home_option, out, user_errors

run_option = click.option("--run", "run_id", default=None, help="Run id (default: the newest).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def dr() -> None:
    """Disaster-recovery procedures on a running topology (see `testbed up --detach`)."""


def _operate(run_id: str | None, home: str | None, as_json: bool, act: Any) -> None:
    from testbed.backends.local import LocalBackend
    from testbed.deployment import attach, dr_state
    from testbed.operations.dr import Operator
    from testbed.topology import load_topology

    backend = LocalBackend.attach(home, run_id)
    manifest = backend.run.manifest
    deployment = attach(
        load_topology(manifest.topology or "active-standby"), backend, manifest.dr_state
    )
    operator = Operator(deployment)
    try:
        facts = act(operator)
    finally:
        backend.run.update(dr_state=dr_state(deployment))
    if as_json:
        click.echo(json.dumps(facts, indent=2, default=str))
        return
    err.print(f"run {backend.id}: {facts.get('procedure')} done", highlight=False)
    for key, value in facts.items():
        if key != "procedure":
            out.print(f"{key:>24}  {value}", highlight=False, soft_wrap=True)


@dr.command("fail-site")
@click.argument("site")
@run_option
@home_option
@json_option
@user_errors
def fail_site(site: str, run_id: str | None, home: str | None, as_json: bool) -> None:
    """Kill every server of SITE at once, as a disaster would."""
    _operate(run_id, home, as_json, lambda op: op.fail_site(site))


@dr.command()
@click.argument("site")
@click.option("--force", is_flag=True, help="Promote although the primary is not fenced.")
@run_option
@home_option
@json_option
@user_errors
def promote(site: str, force: bool, run_id: str | None, home: str | None, as_json: bool) -> None:
    """Promote the standby Info Mart at SITE; refused while its primary still runs."""
    _operate(run_id, home, as_json, lambda op: op.promote(site, force=force))


@dr.command("activate-gim")
@click.argument("site")
@click.option("--force", is_flag=True, help="Start it although another GIM is in service.")
@run_option
@home_option
@json_option
@user_errors
def activate_gim(
    site: str, force: bool, run_id: str | None, home: str | None, as_json: bool
) -> None:
    """Bring GIM at SITE into service (needs a pipeline: a scenario step)."""
    _operate(run_id, home, as_json, lambda op: op.activate_gim(site, force=force))


@dr.command("add-site")
@click.argument("site")
@click.option("--replaces", default=None, help="The failed site it replaces.")
@run_option
@home_option
@json_option
@user_errors
def add_site(
    site: str, replaces: str | None, run_id: str | None, home: str | None, as_json: bool
) -> None:
    """Bring up SITE (its IDB and an empty Info Mart) to replace a failed site."""
    _operate(run_id, home, as_json, lambda op: op.add_site(site, replaces))


@dr.command("recover-site")
@click.argument("site")
@click.option(
    "--disks",
    type=click.Choice(["kept", "lost"]),
    default="kept",
    show_default=True,
    help="kept: its servers restart on their old data; lost: rebuilt empty.",
)
@run_option
@home_option
@json_option
@user_errors
def recover_site(
    site: str, disks: str, run_id: str | None, home: str | None, as_json: bool
) -> None:
    """Bring the failed SITE back under its own name, on its old disks or on new ones."""
    _operate(run_id, home, as_json, lambda op: op.recover_site(site, disks=disks))


@dr.command()
@click.option("--from", "source", required=True, help="Site whose Info Mart is copied.")
@click.option("--to", "target", required=True, help="Site that receives the copy.")
@click.option("--gim", type=click.Choice(["running", "stopped"]), default="running")
@click.option(
    "--method",
    type=click.Choice(["basebackup", "rewind"]),
    default="basebackup",
    show_default=True,
    help="rewind: pg_rewind an old primary that the source's promotion left behind.",
)
@run_option
@home_option
@json_option
@user_errors
def transfer(
    source: str,
    target: str,
    gim: str,
    method: str,
    run_id: str | None,
    home: str | None,
    as_json: bool,
) -> None:
    """Copy the Info Mart over the WAN, then stream from it."""
    _operate(run_id, home, as_json, lambda op: op.transfer(source, target, gim=gim, method=method))


@dr.command()
@click.option("--to", "target", required=True, help="Site whose standby becomes the primary.")
@run_option
@home_option
@json_option
@user_errors
def switchover(target: str, run_id: str | None, home: str | None, as_json: bool) -> None:
    """Planned role change without loss: the standby at --to becomes the primary."""
    _operate(run_id, home, as_json, lambda op: op.switchover(target))
