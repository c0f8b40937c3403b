"""`testbed plan`: how long operations on a real deployment take, from measured rates."""

from __future__ import annotations

import json

import click

from testbed.cli.output import out, user_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def plan() -> None:
    """Plan operations on a real deployment from rates measured on real servers."""


@plan.command()
@click.option("--size", required=True, help="Data to copy: 800GB, 1.5 TB, 500MiB.")
@click.option("--link", required=True, help="WAN rate: 1Gbit/s, 100Mbit/s, 1Gbps, 10MB/s.")
@click.option(
    "--workload",
    default=None,
    help="Events GIM keeps loading meanwhile: 2000/h (or /s, /min, /d).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@user_errors
def transfer(size: str, link: str, workload: str | None, as_json: bool) -> None:
    """How long a base backup of the Info Mart takes across the WAN, and the catch-up after.

    For rebuilding a standby after a long outage: the copy at the link's measured
    efficiency, then, with --workload, the WAL GIM writes meanwhile.
    """
    from testbed.operations.planner import (
        load_rates,
        parse_link,
        parse_size,
        parse_workload,
        plan_transfer,
        render_plan,
    )

    size_bytes = parse_size(size)
    link_rate = parse_link(link)
    per_hour = parse_workload(workload) if workload is not None else None
    result = plan_transfer(size_bytes, link_rate, per_hour, load_rates())
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for line in render_plan(result):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
