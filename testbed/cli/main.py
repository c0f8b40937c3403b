"""The `testbed` command: the group that gathers every command module."""

from __future__ import annotations

import sys
from typing import Any

import click

from testbed.cli.compose import compose
from testbed.cli.dr import dr
from testbed.cli.environment import down, status, up
from testbed.cli.fuzz import fuzz
from testbed.cli.images import images
from testbed.cli.plan import plan
from testbed.cli.proxy import proxy
from testbed.cli.run import list_scenarios, report, run


class OneLineErrors(click.Group):
    """A mistake on the command line is one line and exit 2, as a mistake in a file is
    (`user_errors`), not click's usage block: scripts and CI logs read the last line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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
