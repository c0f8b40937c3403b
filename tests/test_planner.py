"""The transfer planner: units read as written, arithmetic checkable by hand, errors one line."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from testbed.cli.plan import plan
from testbed.errors import TestbedError
from testbed.operations.planner import (
    MeasuredRates,
    catch_up_seconds,
    format_size,
    format_span,
    icon_bytes_per_s,
    load_rates,
    parse_link,
    parse_size,
    parse_workload,
    plan_transfer,
    render_plan,
)
from testbed.pipeline.icon import BATCH_MAX

PERFECT = MeasuredRates(link_efficiency=1.0, proxy_bytes_per_s=1e12, wal_bytes_per_event=1000.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("800GB", 800 * 10**9),
        ("1TB", 10**12),
        ("1.5 TB", 1_500 * 10**9),
        ("500MiB", 500 * 2**20),
        ("2GiB", 2 * 2**30),
        ("1tib", 2**40),
        ("10 kb", 10_000),
        ("123B", 123),
        (" .5GB ", 500 * 10**6),
    ],
)
def test_sizes_use_decimal_and_binary_units_as_written(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["banana", "800", "GB", "800 GBs", "-1GB", "0TB", "1,5TB", ""])
def test_a_size_without_a_known_unit_is_refused_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(TestbedError) as caught:
        parse_size(text)
    message = str(caught.value)
    assert "\n" not in message
    assert "800GB" in message and "MiB" in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1Gbit/s", 125e6),
        ("1Gbps", 125e6),
        ("1 Gb/s", 125e6),
        ("100Mbit/s", 12.5e6),
        ("100mbps", 12.5e6),
        ("10MB/s", 10e6),
        ("1GB/s", 1e9),
        ("64MiB/s", 64 * 2**20),
        ("512kbit/s", 64e3),
    ],
)
def test_link_rates_are_bits_or_bytes_per_second_as_written(text: str, expected: float) -> None:
    assert parse_link(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["fast", "1G", "1Gbit", "100 Mbit/h", "0Gbit/s", "10 MBps"])
def test_a_link_rate_not_understood_is_refused_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(TestbedError) as caught:
        parse_link(text)
    assert "\n" not in str(caught.value)
    assert "1Gbit/s" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "per_hour"),
    [
        ("2000/h", 2000.0),
        ("0.5/s", 1800.0),
        ("30/min", 1800.0),
        ("48000/d", 2000.0),
        ("2000 / hour", 2000.0),
        ("0/h", 0.0),
    ],
)
def test_workloads_are_converted_to_events_per_hour(text: str, per_hour: float) -> None:
    assert parse_workload(text) == pytest.approx(per_hour)


@pytest.mark.parametrize("text", ["2000", "2000/m", "lots/h", "2000/week", "-5/h"])
def test_a_workload_not_understood_is_refused_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(TestbedError, match="2000/h"):
        parse_workload(text)


def test_one_terabyte_over_a_perfect_gigabit_link_takes_8000_seconds() -> None:
    result = plan_transfer(10**12, parse_link("1Gbit/s"), None, PERFECT)
    assert result.transfer_s == pytest.approx(8000)
    assert result.total_s is None and result.catch_up_s is None
    assert any("no workload" in a for a in result.assumptions)


def test_link_efficiency_stretches_the_copy() -> None:
    rates = MeasuredRates(link_efficiency=0.8, proxy_bytes_per_s=1e12, wal_bytes_per_event=0)
    result = plan_transfer(10**12, 125e6, None, rates)
    assert result.effective_bytes_per_s == pytest.approx(100e6)
    assert result.transfer_s == pytest.approx(10_000)
    assert not result.capped_by_proxy


def test_a_link_faster_than_the_measured_copy_is_capped_and_says_so() -> None:
    rates = MeasuredRates(link_efficiency=1.0, proxy_bytes_per_s=50e6, wal_bytes_per_event=0)
    result = plan_transfer(10**12, parse_link("10Gbit/s"), None, rates)
    assert result.capped_by_proxy
    assert result.effective_bytes_per_s == 50e6
    assert result.transfer_s == pytest.approx(20_000)
    assert any("faster than" in a for a in result.assumptions)


def test_catch_up_is_the_sum_of_the_geometric_series() -> None:
    backlog, rate, wal = 1e9, 100e6, 25e6
    series, chunk = 0.0, backlog
    for _ in range(200):  # stream what is behind; meanwhile more is written
        series += chunk / rate
        chunk = chunk / rate * wal
    assert catch_up_seconds(backlog, rate, wal) == pytest.approx(series)
    assert catch_up_seconds(backlog, rate, wal) == pytest.approx(backlog / (rate - wal))
    assert catch_up_seconds(0, rate, wal) == 0
    assert catch_up_seconds(backlog, rate, rate) == math.inf


def test_workload_wal_during_the_copy_and_its_catch_up() -> None:
    # 1 TB at 125 MB/s: 8000 s; 3600 events/h = 1/s at 1000 B each = 1000 B/s of WAL.
    result = plan_transfer(10**12, 125e6, 3600, PERFECT)
    assert result.wal_bytes_per_s == pytest.approx(1000)
    assert result.wal_during_transfer_bytes == pytest.approx(8e6)
    assert result.catch_up_s == pytest.approx(8e6 / (125e6 - 1000))
    # Streaming the WAL alongside the copy on the same link comes to the same total.
    assert result.total_s == pytest.approx(10**12 / (125e6 - 1000))
    assert result.catches_up
    assert any("GIM keeps loading" in a for a in result.assumptions)


def test_a_workload_writing_wal_faster_than_the_link_never_catches_up() -> None:
    result = plan_transfer(10**9, 1000, 3600, PERFECT)  # 1000 B/s of WAL on a 1000 B/s link
    assert result.catch_up_s == math.inf and not result.catches_up
    assert result.to_json()["total_s"] is None
    assert json.loads(json.dumps(result.to_json()))["catches_up"] is False
    assert any("never catches up" in a for a in result.assumptions)
    assert any(line.startswith("total") and "never" in line for line in render_plan(result))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (8000, "2h 13m"),
        (8760, "2h 26m"),
        (3599.7, "1h"),
        (90, "1m 30s"),
        (42.4, "42s"),
        (0.2, "under 1s"),
        (0, "0s"),
        (3 * 86400 + 5 * 3600, "3d 5h"),
        (math.inf, "never"),
    ],
)
def test_durations_read_as_hours_and_minutes(seconds: float, text: str) -> None:
    assert format_span(seconds) == text


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(10**12, "1.00 TB"), (800 * 10**9, "800 GB"), (2.29e6, "2.29 MB"), (345, "345 B")],
)
def test_sizes_read_with_three_significant_digits(nbytes: float, text: str) -> None:
    assert format_size(nbytes) == text


def test_the_rendered_plan_shows_the_figures_then_the_assumptions() -> None:
    lines = render_plan(plan_transfer(10**12, 125e6, 2000, PERFECT))
    labels = [line.split("  ")[0] for line in lines[: lines.index("assumptions:")]]
    assert labels == [
        "size",
        "link",
        "effective rate",
        "base backup",
        "workload",
        "WAL during backup",
        "catch-up",
        "total",
    ]
    assert lines[0].endswith("1.00 TB")
    assert "2h 13m" in lines[3]


def test_the_shipped_rates_are_plausible_measurements() -> None:
    rates = load_rates()
    assert 0.5 < rates.link_efficiency <= 1.0
    assert rates.proxy_bytes_per_s > 10e6
    assert 100 < rates.wal_bytes_per_event < 10_000
    assert rates.source == "bench/transfer.py"


def test_unreadable_rates_are_a_user_error(tmp_path) -> None:
    broken = tmp_path / "rates.json"
    broken.write_text('{"link_efficiency": 0.9}')
    with pytest.raises(TestbedError, match=r"bench/transfer\.py"):
        load_rates(broken)
    with pytest.raises(TestbedError, match=r"bench/transfer\.py"):
        load_rates(tmp_path / "missing.json")


def test_cli_prints_the_plan_and_exits_0() -> None:
    result = CliRunner().invoke(
        plan, ["transfer", "--size", "800GB", "--link", "1Gbit/s", "--workload", "2000/h"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split() == ["size", "800", "GB"]
    assert "catch-up" in result.stdout and "assumptions:" in result.stdout


def test_cli_json_is_the_plan_as_data() -> None:
    result = CliRunner().invoke(plan, ["transfer", "--size", "1TB", "--link", "1Gbps", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["size_bytes"] == 10**12
    assert data["link_bytes_per_s"] == 125e6
    assert data["total_s"] is None and data["assumptions"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--size", "banana", "--link", "1Gbit/s"], "size 'banana'"),
        (["--size", "1TB", "--link", "fast"], "link rate 'fast'"),
        (["--size", "1TB", "--link", "1Gbit/s", "--workload", "busy"], "workload 'busy'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(plan, ["transfer", *args])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0] and "Traceback" not in result.output
    assert result.stdout == ""


def test_cli_missing_size_is_a_usage_error() -> None:
    result = CliRunner().invoke(plan, ["transfer", "--link", "1Gbit/s"])
    assert result.exit_code == 2
    assert "--size" in result.stderr


WITH_ICON = MeasuredRates(
    link_efficiency=1.0,
    proxy_bytes_per_s=1e12,
    wal_bytes_per_event=1000.0,
    icon_wire_bytes_per_event=100.0,
    icon_wire_bytes_per_batch=300.0,
)


def test_icon_traffic_takes_its_share_of_the_link_from_the_copy() -> None:
    # 3600 events/h = 1/s: ICON flushes every 5 s, so 5-event batches: 100 + 300/5 = 160 B/s.
    assert icon_bytes_per_s(3600, WITH_ICON) == pytest.approx(160)
    result = plan_transfer(10**12, 125e6, 3600, WITH_ICON)
    assert result.icon_bytes_per_s == pytest.approx(160)
    assert result.copy_bytes_per_s == pytest.approx(125e6 - 160)
    assert result.transfer_s == pytest.approx(10**12 / (125e6 - 160))
    # The whole job: copy and catch-up share what ICON leaves with the WAL.
    assert result.total_s == pytest.approx(10**12 / (125e6 - 160 - 1000))
    assert any("ICON's writes across it" in a for a in result.assumptions)
    alone = plan_transfer(10**12, 125e6, 3600, PERFECT)
    assert result.total_s > alone.total_s


def test_a_busier_site_sends_fuller_batches() -> None:
    """A batch's statement is paid once per batch: per event it shrinks as the rate grows,
    down to the full-batch cost."""
    slow = icon_bytes_per_s(360, WITH_ICON) / (360 / 3600)  # one event per batch
    busy = icon_bytes_per_s(3_600_000, WITH_ICON) / 1000  # full batches
    assert slow == pytest.approx(400)
    assert busy == pytest.approx(100 + 300 / BATCH_MAX)


def test_icon_and_wal_together_filling_the_link_never_catch_up() -> None:
    # 3600/h: WAL 1000 B/s + ICON 160 B/s on a 1100 B/s link.
    result = plan_transfer(10**6, 1100, 3600, WITH_ICON)
    assert not result.catches_up
    assert any("never catches up" in a for a in result.assumptions)
    # ICON alone leaving nothing for the copy: the copy itself never ends.
    stalled = plan_transfer(10**6, 150, 3600, WITH_ICON)
    assert stalled.transfer_s == math.inf and not stalled.catches_up
