"""`testbed images`: the docker backend's images, built locally (no registry needed)."""

from __future__ import annotations

import json

import click

from testbed.cli.output import err, user_errors


@click.group()
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
