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
    help="Folder for two-site.yml, swarm-stack.yml and wan.json.",
)
@user_errors
def compose(topology: str, folder: str) -> None:
    """Write the Compose file and the swarm stack file of a long-lived environment."""
    from pathlib import Path

    from testbed.backends import swarmfile
    from testbed.backends.composefile import write
    from testbed.topology import load_topology

    chosen = load_topology(topology)
    paths = write(chosen, Path(folder))
    stack = Path(folder) / "swarm-stack.yml"
    stack.write_text(swarmfile.render(chosen))
    for path in (*paths, stack):
        err.print(f"wrote {path}", highlight=False)
