"""Choosing ports to listen on, outside the kernel's ephemeral range.

A listening port is chosen once and bound again and again: an ICON binds it at every restart,
a server at every start, a published container port for the run's life. A port from the
ephemeral range (what `bind(("", 0))` hands out) may meanwhile become the local end of one of
the hundreds of outgoing connections a run makes, and the next bind fails with "address
already in use". Ports below that range are never handed to outgoing connections, so only
another listener can take them, and a check just before use catches that.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL_RANGE = (32768, 60999)
LOWEST_LISTEN_PORT = 20000  # above the well-known and most registered service ports
MIN_RANGE_SIZE = 1000


def ephemeral_range() -> tuple[int, int]:
    """Where the kernel picks local ports for outgoing connections."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL_RANGE
    return low, high


def listen_range() -> tuple[int, int] | None:
    """A band of ports outside the ephemeral range, or None when the kernel leaves none
    worth using (then any free port will do)."""
    low, high = ephemeral_range()
    if low - 1 - LOWEST_LISTEN_PORT >= MIN_RANGE_SIZE:
        return LOWEST_LISTEN_PORT, low - 1
    if 65535 - (high + 1) >= MIN_RANGE_SIZE:
        return high + 1, 65535
    return None


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on `port` (TIME_WAIT leftovers do not count as taken)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports that are free on `host` now and outside the ephemeral range."""
    band = listen_range()
    if band is None:
        return _kernel_chosen(count, host)
    chosen: list[int] = []
    for _ in range(count * 200):
        port = random.randint(*band)
        if port not in chosen and port_is_free(host, port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    return chosen + _kernel_chosen(count - len(chosen), host)


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def _kernel_chosen(count: int, host: str) -> list[int]:
    """Held open together while chosen, since asking one at a time may hand out the same
    just-released port twice."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
