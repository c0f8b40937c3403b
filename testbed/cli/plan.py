"""`testbed plan`: how long operations on a real deployment take, from measured rates."""

from __future__ import annotations

import json
from typing import Any

import click

from testbed.cli.output import out, user_errors


class _PlanGroup(click.Group):
    """`testbed plan transfer|outage ...`, and `testbed plan SCENARIO` for a scenario file
    or a catalog name: anything that is not a subcommand is a scenario to plan."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None:
            return found
        return _scenario_command(cmd_name)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "transfer|outage ... | SCENARIO [--json]")


@click.group(cls=_PlanGroup, context_settings={"help_option_names": ["-h", "--help"]})
def plan() -> None:
    """Plan operations on a real deployment, and what an outage costs, without running it.

    `testbed plan SCENARIO` (a file or a catalog name) applies the rules to the scenario's
    timeline as written and prints what each site loses, with no server started.
    """


def _scenario_command(name: str) -> click.Command:
    @click.command(name=name)
    @click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
    @user_errors
    def scenario_plan(as_json: bool) -> None:
        from testbed.scenarios.outage_plan import concrete_steps, plan_timeline
        from testbed.scenarios.spec import load_scenario

        scenario = load_scenario(name)
        threshold = float(scenario.settings.get("extract_data_stuck_threshold", 8 * 3600))
        result = plan_timeline(
            scenario.name,
            scenario.topology,
            concrete_steps(scenario),
            threshold,
            scenario.rate_per_hour,
            scenario.seed,
        )
        _print_outage(result, as_json)

    return scenario_plan


def _print_outage(result: Any, as_json: bool) -> None:
    from testbed.scenarios.outage_plan import render_outage

    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for line in render_outage(result):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@plan.command()
@click.option("--duration", required=True, help="How long the WAN is down: 11h, 90m, 2d.")
@click.option("--threshold", default="8h", show_default=True, help="extract-data-stuck-threshold.")
@click.option("--rate", default="600/h", show_default=True, help="Events per site: 600/h, 1/s.")
@click.option(
    "--topology",
    type=click.Choice(["active-standby", "active-active"]),
    default="active-standby",
    show_default=True,
)
@click.option("--at", "start", default="1h", show_default=True, help="When the outage begins.")
@click.option("--mode", type=click.Choice(["reset", "blackhole"]), default="reset")
@click.option("--seed", type=int, default=1, show_default=True, help="The workload's seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@user_errors
def outage(
    duration: str,
    threshold: str,
    rate: str,
    topology: str,
    start: str,
    mode: str,
    seed: int,
    as_json: bool,
) -> None:
    """What a WAN outage between site 1 and site 2 loses, per site, by the rules.

    The reference model the verdict uses, applied without servers: the loss window of a
    site cut off longer than the threshold, its events at the given rate, and how long its
    reporting stops.
    """
    from testbed.clock import parse_duration
    from testbed.errors import TestbedError
    from testbed.operations.planner import parse_workload
    from testbed.scenarios.outage_plan import outage_steps, plan_timeline
    from testbed.topology import load_topology

    length, limit, at = parse_duration(duration), parse_duration(threshold), parse_duration(start)
    if length <= 0 or limit <= 0:
        raise TestbedError("duration and threshold must both be positive")
    result = plan_timeline(
        f"WAN outage of {duration}",
        load_topology(topology),
        outage_steps(at, length, mode),
        limit,
        parse_workload(rate),
        seed,
    )
    _print_outage(result, as_json)


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
