"""What every command shares: the consoles, the handling of errors a user can fix, the
common options, and the server tables.

Errors a user can fix are one line on stderr and exit code 2 (`TestbedError`); tracebacks
are for bugs only. Tables go to stdout, progress to stderr, so `--json` output pipes cleanly.
Every command module imports this one and nothing imports the command modules but
`main.py`, so the command groups never import each other.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from testbed.errors import TestbedError

# Piped output is read by programs and logs: do not wrap table rows at 80 columns there.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, log_path=False)


toxiproxy_image_option = click.option(
    "--toxiproxy-image",
    default=None,
    help="Docker backend: run this image (e.g. a real Toxiproxy) as the WAN proxy.",
)


def writable_folder(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A folder the command will write into, checked before anything starts: one that
    cannot be made or written is a bad value, not a traceback once servers run."""
    if value is None:
        return value
    folder = Path(value)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".writable-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise click.BadParameter(f"{value}: cannot be written ({exc.strerror or exc})") from None
    return value


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False),
    default=None,
    callback=writable_folder,
    help="Folder holding runs/ (default: $TESTBED_HOME or ./.testbed).",
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


def print_servers(title: str, rows: list[dict[str, Any]], states: bool = False) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("site", "role", "name", "host:port", "pid", *(("state",) if states else ())):
        table.add_column(column)
    for row in rows:
        cells = [row["site"], row["role"], row["name"], row["address"], str(row["pid"] or "-")]
        if states:
            cells.append(row["state"])
        table.add_row(*cells)
    out.print(table)


def print_passfile(rows: list[dict[str, Any]]) -> None:
    """How to reach a server by hand: the run's password file, never the password."""
    passfiles = {str(row.get("passfile") or "") for row in rows} - {""}
    if not passfiles or not rows:
        return
    host, _, port = str(rows[0]["address"]).rpartition(":")
    err.print(
        "every server requires the run's password, in a libpq password file only you can"
        f" read: PGPASSFILE={' '.join(sorted(passfiles))} psql -h {host} -p {port} -U postgres",
        highlight=False,
        soft_wrap=True,
    )


def print_wan(rows: list[dict[str, str]]) -> None:
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
