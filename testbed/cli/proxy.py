"""`testbed proxy`: the Toxiproxy-compatible WAN proxy, run on its own."""

from __future__ import annotations

import click


@click.group()
def proxy() -> None:
    """The Toxiproxy-compatible WAN proxy."""


@proxy.command(
    "serve",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def proxy_serve(args: tuple[str, ...]) -> None:
    """Run a proxy server: [-host H] [-port P] [-config FILE] (Toxiproxy's flags), and ours:
    [-workers N] [-reference]."""
    from testbed.netfault.server import main as serve

    serve(list(args))
