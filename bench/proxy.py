"""Throughput through the WAN proxy with no toxics, against a direct connection and against
the plain TCP relays people would otherwise put there (HAProxy in tcp mode, socat).

Prints one JSON object: raw stream MB/s (one TCP stream, 1 MiB writes, a sink in another
process) and pgbench TPS (the default TPC-B-like mix, and select-only, where a relay's
per-message cost shows most), for every path: direct, through our proxy, and through each
peer relay that is installed (a missing one is reported, not fatal). Median of `--runs`
each, interleaved round by round in a rotating order so machine noise hits every path
alike, with ratios to direct. A short table goes to stderr.

Many short pgbench runs rather than a few long ones: each run opens new connections, so
new backends and relay tasks that the scheduler places anew, and on two cores a run's TPS
depends on that placement by as much as a third, for every path alike. Eleven two-second
runs sample it better than five of three seconds, in half as much time again.

    python bench/proxy.py [--runs 11] [--stream-mb 1024] [--pgbench-seconds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from testbed.backends.local import LocalBackend
from testbed.credentials import ENV as PASSFILE_ENV
from testbed.ports import LOOPBACK, free_port, port_is_free
from testbed.postgres import split_address
from testbed.procs import run_stoppable

CHUNK = 1 << 20
PEER_START_TIMEOUT_S = 5.0
PEER_STOP_TIMEOUT_S = 5.0
MODES = {"tpcb": False, "select_only": True}  # name -> pgbench -S
MODE_TITLES = {"tpcb": "TPC-B-like", "select_only": "select-only"}
PGBENCH_CLIENTS = 4

HAPROXY_CONFIG = """\
global
    maxconn 1024
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend relay
    bind {listen}
    default_backend target
backend target
    server target {upstream}
"""


# --- measurements ------------------------------------------------------------------------


def _sink(listener: socket.socket, result: Connection) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked helper just ends when stopped
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the benchmark to handle
    conn, _ = listener.accept()
    total = 0
    while data := conn.recv(CHUNK):
        total += len(data)
    result.send((total, time.perf_counter()))


def stream_mb_s(sink_port: int, target: tuple[str, int], megabytes: int) -> float:
    """MB/s of one stream sent to `target`, which leads (directly or not) to the sink."""
    listener = socket.create_server((LOOPBACK, sink_port))
    receive, send = multiprocessing.Pipe(duplex=False)
    sink = multiprocessing.Process(target=_sink, args=(listener, send))
    sink.start()
    listener.close()
    payload = b"\xa5" * CHUNK
    with socket.create_connection(target) as conn:
        start = time.perf_counter()
        for _ in range(megabytes):
            conn.sendall(payload)
    total, end = receive.recv()
    sink.join()
    assert total == megabytes * CHUNK, f"sink got {total} bytes of {megabytes * CHUNK}"
    return total / (end - start) / 1e6


def pgbench_tps(pgbench: str, address: str, seconds: int, select_only: bool = False) -> float:
    host, port = split_address(address)
    argv = [pgbench, "-h", host, "-p", str(port), "-U", "postgres", "-n", "postgres"]
    argv += ["-c", str(PGBENCH_CLIENTS), "-j", "2", "-T", str(seconds)]
    argv += ["-S"] if select_only else []
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = re.search(r"tps = ([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"no tps in pgbench output: {out[-300:]!r}")
    return float(found.group(1))


# --- peer relays -------------------------------------------------------------------------


class PeerFailed(Exception):
    """A peer relay that is installed but would not start; reported, not fatal."""


def haproxy_argv(exe: str, listen: str, upstream: str, workdir: Path) -> list[str]:
    config = workdir / f"haproxy-{listen.rpartition(':')[2]}.cfg"
    config.write_text(HAPROXY_CONFIG.format(listen=listen, upstream=upstream))
    return [exe, "-db", "-f", str(config)]


def socat_argv(exe: str, listen: str, upstream: str, workdir: Path) -> list[str]:
    host, port = split_address(listen)
    return [exe, f"TCP-LISTEN:{port},fork,reuseaddr,bind={host}", f"TCP:{upstream}"]


PEERS: dict[str, Callable[[str, str, str, Path], list[str]]] = {
    "haproxy": haproxy_argv,
    "socat": socat_argv,
}


@contextlib.contextmanager
def relay(argv: list[str], port: int, log: Path) -> Iterator[str]:
    """A relay process listening on `port` of the loopback; its whole process group (socat
    forks one child per connection) is stopped on the way out, whatever happened."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + PEER_START_TIMEOUT_S
        while port_is_free(LOOPBACK, port):  # taken once the relay listens; no probe traffic
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()
                raise PeerFailed(f"did not start: {tail[-1] if tail else 'no output'}")
            time.sleep(0.05)
        yield f"{LOOPBACK}:{port}"
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=PEER_STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # forked children left behind by a dead parent


def start_peers(
    stack: contextlib.ExitStack, upstreams: dict[str, str], workdir: Path
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Every installed peer relaying to each of `upstreams` (purpose -> address): peer ->
    purpose -> listen address, and peer -> why it is left out."""
    running: dict[str, dict[str, str]] = {}
    missing: dict[str, str] = {}
    for name, build in PEERS.items():
        exe = shutil.which(name)
        if exe is None:
            missing[name] = f"not installed (Debian package {name})"
            continue
        try:
            listens = {}
            for purpose, upstream in upstreams.items():
                port = free_port()
                argv = build(exe, f"{LOOPBACK}:{port}", upstream, workdir)
                log = workdir / f"{name}-{purpose}.log"
                listens[purpose] = stack.enter_context(relay(argv, port, log))
            running[name] = listens
        except PeerFailed as exc:
            missing[name] = str(exc)
    return running, missing


# --- the run -----------------------------------------------------------------------------


def _ratio(value: float, direct: float) -> float:
    return round(value / direct, 3) if direct else 0.0


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Per path: the median and its ratio to direct for each measure, and the raw runs."""
    median = statistics.median
    direct = {measure: median(values) for measure, values in samples["direct"].items()}
    out: dict[str, dict[str, Any]] = {}
    for path, measures in samples.items():
        row: dict[str, Any] = {}
        for measure, values in measures.items():
            row[measure] = round(median(values), 1)
            row[f"{measure}_ratio"] = _ratio(median(values), direct[measure])
            row[f"{measure}_runs"] = [round(v, 1) for v in values]
        out[path] = row
    return out


def best_peers(paths: dict[str, dict[str, Any]], peers: list[str]) -> dict[str, str | None]:
    """Per pgbench mode, the peer with the highest median TPS (None without peers)."""
    return {mode: max(peers, key=lambda p: paths[p][mode], default=None) for mode in MODES}


def print_table(
    paths: dict[str, dict[str, Any]], best: dict[str, str | None], missing: dict[str, str]
) -> None:
    """Medians, with their ratio to direct in brackets, and the verdict per mode."""
    heads = ["stream MB/s", *(f"{MODE_TITLES[m]} TPS" for m in MODES)]
    lines = [f"{'path':<9}" + "".join(f"{h:>22}" for h in heads)]
    for path, row in paths.items():
        cells = [
            f"{row[measure]:>12} ({row[f'{measure}_ratio']:.2f})"
            for measure in ("stream_mb_s", *MODES)
        ]
        lines.append(f"{path:<9}" + "".join(f"{cell:>22}" for cell in cells))
    lines += [f"{name:<9}left out: {why}" for name, why in missing.items()]
    for mode, peer in best.items():
        if peer is not None:
            ours, theirs = paths["ours"][mode], paths[peer][mode]
            verdict = "at least" if ours >= theirs else "below"
            lines.append(
                f"{MODE_TITLES[mode]}: ours {verdict} the best peer ({peer}), "
                f"{ours / theirs:.2f} of its TPS"
            )
    print("\n".join(lines), file=sys.stderr)


def proxy_server_line(backend: LocalBackend) -> str:
    """How the proxy server says it runs (its event loop, its relay workers)."""
    proxy = backend.proxy
    if proxy is None or proxy.external:
        return "external"
    with contextlib.suppress(OSError):
        for line in proxy.logfile.read_text(errors="replace").splitlines():
            if found := re.search(r"proxy API listening on \S+ \((.*)\)", line):
                return found.group(1)
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--stream-mb", type=int, default=1024)
    parser.add_argument("--pgbench-seconds", type=int, default=2)
    parser.add_argument(
        "--storage",
        choices=("ram", "disk"),
        default="ram",
        help="where the pgbench server keeps its data (disk: commits wait for a real fsync)",
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-proxy-", dir="/var/tmp") as home,
        LocalBackend(home=home, storage=args.storage) as backend,
        contextlib.ExitStack() as stack,
    ):
        client = backend.start_proxy()
        server_line = proxy_server_line(backend)
        sink_port = free_port()
        sink = f"{LOOPBACK}:{sink_port}"
        server = backend.new_server("bench").init().start()
        os.environ[PASSFILE_ENV] = str(backend.passfile)  # pgbench authenticates with it
        pgbench = backend.bins.path("pgbench")
        init = [pgbench, "-h", server.host, "-p", str(server.port), "-U", "postgres"]
        subprocess.run([*init, "-i", "-s", "5", "-q", "postgres"], capture_output=True, check=True)
        routes = {
            "direct": {"stream": sink, "pg": server.address},
            "ours": {
                "stream": client.create_proxy("stream", upstream=sink).listen,
                "pg": client.create_proxy("pg", upstream=server.address).listen,
            },
        }
        peers, missing = start_peers(stack, {"stream": sink, "pg": server.address}, Path(home))
        routes.update(peers)
        samples: dict[str, dict[str, list[float]]] = {
            path: {m: [] for m in ("stream_mb_s", *MODES)} for path in routes
        }
        names = list(routes)
        for round_ in range(args.runs):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for path in order:
                target = split_address(routes[path]["stream"])
                samples[path]["stream_mb_s"].append(stream_mb_s(sink_port, target, args.stream_mb))
            for mode, select_only in MODES.items():
                for path in order:
                    tps = pgbench_tps(
                        pgbench, routes[path]["pg"], args.pgbench_seconds, select_only
                    )
                    samples[path][mode].append(tps)
    paths = summarize(samples)
    best = best_peers(paths, list(peers))
    print_table(paths, best, missing)
    ours, direct = paths["ours"], paths["direct"]
    print(
        json.dumps(
            {
                "runs": args.runs,
                "stream_mb": args.stream_mb,
                "stream_mb_s": ours["stream_mb_s"],
                "direct_stream_mb_s": direct["stream_mb_s"],
                "stream_ratio": ours["stream_mb_s_ratio"],
                "pgbench_mode": "tpcb-like (default), 4 clients, 2 threads, scale 5",
                "pgbench_storage": args.storage,
                "pgbench_tps_proxy": ours["tpcb"],
                "pgbench_tps_direct": direct["tpcb"],
                "pgbench_ratio": ours["tpcb_ratio"],
                "pgbench_select_only_tps_proxy": ours["select_only"],
                "pgbench_select_only_tps_direct": direct["select_only"],
                "pgbench_select_only_ratio": ours["select_only_ratio"],
                "stream_mb_s_runs": ours["stream_mb_s_runs"],
                "pgbench_tps_proxy_runs": ours["tpcb_runs"],
                "proxy_server": server_line,
                "paths": paths,
                "peers_missing": missing,
                "best_peer": best,
                "ours_meets_best_peer": {
                    mode: None if peer is None else ours[mode] >= paths[peer][mode]
                    for mode, peer in best.items()
                },
            }
        )
    )


if __name__ == "__main__":
    run_stoppable(main)
