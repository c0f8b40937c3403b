"""The `testbed` command: the group that gathers every command module."""

from __future__ import annotations

import click

from testbed.cli.compose import compose
from testbed.cli.dr import dr
from testbed.cli.environment import down, status, up
from testbed.cli.fuzz import fuzz
from testbed.cli.images import images
from testbed.cli.plan import plan
from testbed.cli.proxy import proxy
from testbed.cli.run import list_scenarios, report, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bc-testbed")
def main() -> None:
    """Chaos testbed for two-site business-continuity reporting pipelines."""


for command in (
    up,
    proxy,
    status,
    down,
    compose,
    images,
    list_scenarios,
    run,
    report,
    plan,
    dr,
    fuzz,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
