"""Throughput through the WAN proxy with no toxics, against a direct connection.

Prints one JSON object: raw stream MB/s (one TCP stream, 1 MiB writes, a sink in another
process) and pgbench TPS (the default TPC-B-like mix, and select-only, where the proxy's
per-message cost shows most), through the proxy and direct, median of `--runs` each,
interleaved so machine noise hits both alike, and their ratios.

    python bench/proxy.py [--runs 5] [--stream-mb 1024] [--pgbench-seconds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import socket
import statistics
import subprocess
import tempfile
import time

from testbed.backends.local import LocalBackend
from testbed.postgres import split_address

CHUNK = 1 << 20


def _sink(listener: socket.socket, result: multiprocessing.connection.Connection) -> None:
    conn, _ = listener.accept()
    total = 0
    while data := conn.recv(CHUNK):
        total += len(data)
    result.send((total, time.perf_counter()))


def stream_mb_s(sink_port: int, target: tuple[str, int], megabytes: int) -> float:
    """MB/s of one stream sent to `target`, which leads (directly or not) to the sink."""
    listener = socket.create_server(("127.0.0.1", sink_port))
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
    argv += ["-c", "4", "-j", "2", "-T", str(seconds), *(["-S"] if select_only else [])]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"tps = ([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stream-mb", type=int, default=1024)
    parser.add_argument("--pgbench-seconds", type=int, default=3)
    parser.add_argument(
        "--storage",
        choices=("ram", "disk"),
        default="ram",
        help="where the pgbench server keeps its data (disk: commits wait for a real fsync)",
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-proxy-", dir="/var/tmp") as home,
        LocalBackend(home=home) as backend,
    ):
        client = backend.start_proxy()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            sink_port = probe.getsockname()[1]
        stream_proxy = client.create_proxy("stream", upstream=f"127.0.0.1:{sink_port}")
        server = backend.new_server("bench").init().start()
        pg_proxy = client.create_proxy("pg", upstream=server.address)
        pgbench = backend.bins.path("pgbench")
        subprocess.run(
            [
                pgbench,
                "-h",
                server.host,
                "-p",
                str(server.port),
                "-U",
                "postgres",
                "-i",
                "-s",
                "5",
                "-q",
                "postgres",
            ],
            capture_output=True,
            check=True,
        )
        direct_mb, proxy_mb, direct_tps, proxy_tps, direct_sel, proxy_sel = ([] for _ in range(6))
        for _ in range(args.runs):
            direct_mb.append(stream_mb_s(sink_port, ("127.0.0.1", sink_port), args.stream_mb))
            proxy_mb.append(
                stream_mb_s(sink_port, (stream_proxy.host, stream_proxy.port), args.stream_mb)
            )
            direct_tps.append(pgbench_tps(pgbench, server.address, args.pgbench_seconds))
            proxy_tps.append(pgbench_tps(pgbench, pg_proxy.listen, args.pgbench_seconds))
            direct_sel.append(pgbench_tps(pgbench, server.address, args.pgbench_seconds, True))
            proxy_sel.append(pgbench_tps(pgbench, pg_proxy.listen, args.pgbench_seconds, True))
    median = statistics.median
    print(
        json.dumps(
            {
                "runs": args.runs,
                "stream_mb": args.stream_mb,
                "stream_mb_s": round(median(proxy_mb), 1),
                "direct_stream_mb_s": round(median(direct_mb), 1),
                "stream_ratio": round(median(proxy_mb) / median(direct_mb), 3),
                "pgbench_mode": "tpcb-like (default), 4 clients, 2 threads, scale 5",
                "pgbench_storage": args.storage,
                "pgbench_tps_proxy": round(median(proxy_tps), 1),
                "pgbench_tps_direct": round(median(direct_tps), 1),
                "pgbench_ratio": round(median(proxy_tps) / median(direct_tps), 3),
                "pgbench_select_only_tps_proxy": round(median(proxy_sel), 1),
                "pgbench_select_only_tps_direct": round(median(direct_sel), 1),
                "pgbench_select_only_ratio": round(median(proxy_sel) / median(direct_sel), 3),
                "stream_mb_s_runs": [round(x, 1) for x in proxy_mb],
                "pgbench_tps_proxy_runs": [round(x, 1) for x in proxy_tps],
            }
        )
    )


if __name__ == "__main__":
    main()
