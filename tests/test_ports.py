"""Listening ports are chosen where outgoing connections never land."""

from __future__ import annotations

import socket

from testbed import ports


def test_chosen_ports_lie_outside_the_ephemeral_range_and_are_free() -> None:
    low, high = ports.ephemeral_range()
    chosen = ports.free_ports(50)
    assert len(set(chosen)) == 50
    for port in chosen:
        assert not low <= port <= high
        assert ports.port_is_free(ports.LOOPBACK, port)


def test_a_port_taken_by_a_listener_is_never_chosen() -> None:
    with socket.socket() as holder:
        holder.bind((ports.LOOPBACK, ports.free_port()))
        holder.listen()
        taken = holder.getsockname()[1]
        assert not ports.port_is_free(ports.LOOPBACK, taken)
        assert taken not in ports.free_ports(200)
