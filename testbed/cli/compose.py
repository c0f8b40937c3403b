"""`testbed compose`: the Compose files of a long-lived two-site environment."""

from __future__ import annotations

import click

from testbed.cli.output import err, user_errors


@click.command()
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

    from testbed.backends.composefile import write
    from testbed.topology import load_topology

    for path in write(load_topology(topology), Path(folder)):
        err.print(f"wrote {path}", highlight=False)
