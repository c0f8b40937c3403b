"""The virtual clock with real processes: the time jumps only when nobody can progress, to
the next instant anybody is due, and wakes those due one at a time in a fixed order."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.errors import TestbedError
from testbed.vclock.coordinator import Coordinator

PRELUDE = """
import os, socket, sys, time
from testbed.vclock.participant import VirtualClock
clock = VirtualClock(os.environ["TESTBED_CLOCK"].removeprefix("virtual:"), NAME, ROLE)
out = open(OUT, "a", buffering=1)
def say(*words):
    out.write(" ".join(str(w) for w in words) + "\\n")
"""


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    blocked: set[str] = set()
    with Coordinator(tmp_path / "clock", blocked=lambda t, r: (r or t) in blocked) as coord:
        coord.blocked_routes = blocked  # type: ignore[attr-defined]
        yield coord


class Participants:
    def __init__(self, coordinator: Coordinator, folder: Path) -> None:
        self.coordinator = coordinator
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, body: str, role: str = "other") -> subprocess.Popen[bytes]:
        code = (
            f"NAME, ROLE, OUT = {name!r}, {role!r}, {str(self.folder / 'out.txt')!r}\n"
            + PRELUDE
            + textwrap.dedent(body)
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env={**os.environ, **self.coordinator.env()}
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while name not in self.coordinator.participants():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{name} never reached the clock"
            time.sleep(0.01)
        return proc

    def lines(self) -> list[str]:
        path = self.folder / "out.txt"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def participants(coordinator: Coordinator, tmp_path: Path) -> Iterator[Participants]:
    group = Participants(coordinator, tmp_path)
    yield group
    group.stop()


def test_time_jumps_to_the_next_instant_anybody_is_due(
    coordinator: Coordinator, participants: Participants
) -> None:
    participants.start(
        "ticker",
        """
        while True:
            clock.sleep(3600)
            say("tick", clock.now())
        """,
    )
    began = time.monotonic()
    coordinator.run_until(10 * 3600 + 1)
    assert time.monotonic() - began < 5  # ten scenario hours, not ten wall seconds
    ticks = [line for line in participants.lines() if line.startswith("tick")]
    assert ticks == [f"tick {float(h * 3600)}" for h in range(1, 11)]
    assert coordinator.now() == 10 * 3600 + 1


def test_the_time_holds_while_a_participant_works(
    coordinator: Coordinator, participants: Participants
) -> None:
    participants.start(
        "worker",
        """
        clock.sleep(10)
        before = clock.now()
        end = time.monotonic() + 0.4
        while time.monotonic() < end:
            pass
        say("worked", before, clock.now())
        clock.sleep(10)
        say("rested", clock.now())
        clock.sleep(10 ** 9)
        """,
    )
    coordinator.run_until(100)
    assert participants.lines() == ["worked 10.0 10.0", "rested 20.0"]


def test_participants_due_at_one_instant_run_one_at_a_time_in_a_fixed_order(
    coordinator: Coordinator, participants: Participants
) -> None:
    # Started in the opposite order, and the GIM's name sorts first: the role decides.
    body = """
        for _ in range(5):
            clock.sleep(60)
            say(NAME, "begins", clock.now())
            end = time.monotonic() + 0.02
            while time.monotonic() < end:
                pass
            say(NAME, "ends", clock.now())
        clock.sleep(10 ** 9)
        """
    participants.start("a-gim", body, role="gim")
    participants.start("z-source", body, role="source")
    participants.start("m-icon", body, role="icon")
    coordinator.run_until(400)
    expected = []
    for minute in range(1, 6):
        for name in ("z-source", "m-icon", "a-gim"):
            expected += [f"{name} begins {minute * 60.0}", f"{name} ends {minute * 60.0}"]
    assert participants.lines() == expected


def test_io_on_a_blocked_route_waits_for_its_deadline_and_healthy_io_holds_the_time(
    coordinator: Coordinator, participants: Participants, tmp_path: Path
) -> None:
    server = socket_server(tmp_path / "peer.sock")
    participants.start(
        "caller",
        f"""
        def call(route):
            peer = socket.socket(socket.AF_UNIX)
            peer.connect({str(tmp_path / "peer.sock")!r})
            began = clock.now()
            with clock.io("peer", route, began + 30, lambda: peer.shutdown(socket.SHUT_RDWR)):
                answer = peer.recv(10)
            say(route, began, clock.now(), answer or b"cancelled")
            peer.close()
        clock.sleep(5)
        call("healthy")
        call("cut")
        clock.sleep(10 ** 9)
        """,
    )
    coordinator.blocked_routes.add("cut")  # type: ignore[attr-defined]

    def answer_late() -> None:
        healthy = server.accept()[0]
        time.sleep(0.3)  # the peer works for a while, in wall time
        healthy.sendall(b"ok")
        healthy.close()

    threading.Thread(target=answer_late, daemon=True).start()
    coordinator.run_until(1000)
    assert participants.lines() == [
        "healthy 5.0 5.0 b'ok'",  # the peer worked: no scenario time passed
        "cut 5.0 35.0 b'cancelled'",  # a black hole: failed at its deadline, exactly
    ]
    server.close()


def test_a_wait_until_settled_ends_at_the_same_instant_once_only_blocked_calls_remain(
    coordinator: Coordinator, participants: Participants, tmp_path: Path
) -> None:
    # A GIM's cycle: two calls out, one answering after wall-time work, one black-holed. It
    # takes the answer, then goes on at the same instant, with no wait of its own.
    healthy = socket_server(tmp_path / "healthy.sock")
    cut = socket_server(tmp_path / "cut.sock")  # never answers
    participants.start(
        "collector",
        f"""
        box = clock.mailbox()
        def call(route):
            peer = socket.socket(socket.AF_UNIX)
            peer.connect({str(tmp_path)!r} + "/" + route + ".sock")
            cancel = lambda: peer.shutdown(socket.SHUT_RDWR)
            with clock.io("peer", route, clock.now() + 30, cancel):
                box.put((route, peer.recv(10) or b"cancelled", clock.now()))
        clock.sleep(5)
        for route in ("healthy", "cut"):
            clock.spawn(lambda route=route: call(route), route)
        got = []
        while (item := box.get(settled=True)) is not None:
            got.append(item)
        say("settled", clock.now(), got)
        say("late", box.get())
        clock.sleep(10 ** 9)
        """,
    )
    coordinator.blocked_routes.add("cut")  # type: ignore[attr-defined]

    def answer_late() -> None:
        peer = healthy.accept()[0]
        time.sleep(0.3)  # the peer works for a while, in wall time
        peer.sendall(b"ok")
        peer.close()

    threading.Thread(target=answer_late, daemon=True).start()
    coordinator.run_until(1000)
    assert participants.lines() == [
        "settled 5.0 [('healthy', b'ok', 5.0)]",  # the time did not move for it
        "late ('cut', b'cancelled', 35.0)",  # the black-holed call: at its deadline
    ]
    healthy.close()
    cut.close()


def reports_of(coordinator: Coordinator, name: str) -> int:
    reports = coordinator.stats()["reports"]
    assert isinstance(reports, dict)
    return int(reports.get(name, 0))


def test_a_call_that_answers_at_once_costs_no_report_and_a_blocked_one_is_reported(
    coordinator: Coordinator, participants: Participants, tmp_path: Path
) -> None:
    # Fifty calls a peer answers at once cost the coordinator no message each (a report on
    # the way in and one on the way out would be a hundred); a call the faults block is
    # still reported, so the time goes on to its deadline.
    server = socket_server(tmp_path / "peer.sock")
    participants.start(
        "caller",
        f"""
        peer = socket.socket(socket.AF_UNIX)
        peer.connect({str(tmp_path / "peer.sock")!r})
        clock.sleep(5)
        for _ in range(50):
            with clock.io("peer", "healthy", clock.now() + 30, lambda: None):
                peer.sendall(b"?")
                peer.recv(1)
        say("quick", clock.now())
        with clock.io("peer", "cut", clock.now() + 30, lambda: peer.shutdown(socket.SHUT_RDWR)):
            peer.sendall(b"!")
            answer = peer.recv(1)
        say("blocked", clock.now(), answer or b"cancelled")
        clock.sleep(10 ** 9)
        """,
    )
    coordinator.blocked_routes.add("cut")  # type: ignore[attr-defined]

    held: list[socket.socket] = []

    def answer_questions() -> None:
        conn = server.accept()[0]
        held.append(conn)  # a black hole: the last question stays unanswered, not refused
        while conn.recv(1) == b"?":
            conn.sendall(b".")

    threading.Thread(target=answer_questions, daemon=True).start()
    # The caller is named before its first state report is read: no entry yet counts as 0.
    before = reports_of(coordinator, "caller")
    coordinator.run_until(1000)
    assert participants.lines() == ["quick 5.0", "blocked 35.0 b'cancelled'"]
    reports = reports_of(coordinator, "caller") - before
    assert reports < 25, f"{reports} reports for 51 calls"
    server.close()


def test_a_handoff_between_threads_is_never_taken_for_quiescence(
    coordinator: Coordinator, participants: Participants
) -> None:
    participants.start(
        "pair",
        """
        box = clock.mailbox()
        def consumer():
            while True:
                item = box.get()
                end = time.monotonic() + 0.05  # work the handoff asked for
                while time.monotonic() < end:
                    pass
                say("took", item, clock.now())
                clock.sleep(1)
                say("after", item, clock.now())
        clock.spawn(consumer, "consumer")
        for i in range(3):
            clock.sleep(100)
            box.put(i)
        clock.sleep(10 ** 9)
        """,
    )
    coordinator.run_until(1000)
    assert participants.lines() == [
        "took 0 100.0",
        "after 0 101.0",
        "took 1 200.0",
        "after 1 201.0",
        "took 2 300.0",
        "after 2 301.0",
    ]


def test_a_frozen_participant_holds_nothing_up_and_wakes_late(
    coordinator: Coordinator, participants: Participants
) -> None:
    frozen = participants.start(
        "sleeper",
        """
        clock.sleep(50)
        say("woke", clock.now())
        clock.sleep(10 ** 9)
        """,
    )
    participants.start(
        "ticker",
        """
        while True:
            clock.sleep(10)
            say("tick", clock.now())
        """,
    )
    frozen.send_signal(signal.SIGSTOP)
    coordinator.freeze("sleeper")
    coordinator.run_until(100)
    assert "woke 50.0" not in participants.lines()
    frozen.send_signal(signal.SIGCONT)
    coordinator.thaw("sleeper")
    coordinator.run_until(101)
    lines = participants.lines()
    assert "woke 100.0" in lines  # its timer had passed: it runs at the instant it resumed
    assert [line for line in lines if line.startswith("tick")][-1] == "tick 100.0"


def test_a_killed_participant_holds_nothing_up(
    coordinator: Coordinator, participants: Participants
) -> None:
    busy = participants.start("spinner", "while True:\n    pass\n")
    participants.start("ticker", "while True:\n    clock.sleep(10)\n    say(clock.now())\n")
    busy.kill()
    busy.wait(10)
    coordinator.run_until(31)  # the instant 30 itself plays out once the time passes it
    assert participants.lines()[-1] == "30.0"


def test_a_stall_is_named_with_whoever_holds_the_time(
    coordinator: Coordinator, participants: Participants
) -> None:
    participants.start("spinner", "while True:\n    pass\n")
    with pytest.raises(TestbedError, match=r"stalled at t=0s: spinner \(busy\)"):
        coordinator.run_until(10, wall_limit=0.5)


def test_a_participant_whose_clock_is_gone_exits(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path / "clock")
    group = Participants(coordinator, tmp_path)
    proc = group.start("orphan", "clock.sleep(10)\n")
    coordinator.close()
    assert proc.wait(10) == 70


def socket_server(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    return server


def test_a_coordinator_for_a_deep_folder_leaves_no_folder_of_its_own(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    coordinator = Coordinator(deep)
    own = coordinator.path.parent
    assert own != deep and own.name.startswith("testbed-clock-")  # sun_path is 108 bytes
    coordinator.close()
    assert not own.exists()


def full_backlog_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listener that never accepts (a frozen ICON), its backlog full: a new connect waits
    for an answer that never comes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    queued: list[socket.socket] = []
    for _ in range(16):
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(server.getsockname())
        queued.append(client)
        if not select.select([], [client], [], 0.2)[1]:
            return server, queued
    raise AssertionError("the backlog never filled")


def test_a_frozen_icons_full_backlog_holds_a_probe_until_its_deadline_not_a_wall_timeout(
    coordinator: Coordinator, participants: Participants
) -> None:
    # A data source probes a frozen ICON once a heartbeat. Once the ICON's listen backlog
    # is full, each connect waits for ever: the clock's deadline must end it, at once, not
    # a wall timeout (0.2 s a heartbeat once cost a long freeze most of its run).
    server, queued = full_backlog_listener()
    port = server.getsockname()[1]
    participants.start(
        "source",
        f"""
        from testbed.pipeline.workload import Event, IconLink
        def record(batch, icon, delivered, since):
            say("record", len(batch), delivered)
        link = IconLink("icon1a", {port}, 60.0, record, clock=clock)
        link.start()
        for i in range(40):
            clock.sleep_until((i + 1) * 60.0)
            event = Event(f"e{{i}}", "site1", clock.now(), "p")
            link.offer([event], clock.now(), (event.to_json() + "\\n").encode())
        clock.sleep(10 ** 9)
        """,
        role="source",
    )
    coordinator.blocked_routes.add("icon1a")  # type: ignore[attr-defined]  # frozen
    began = time.monotonic()
    coordinator.run_until(42 * 60.0)
    wall = time.monotonic() - began
    assert participants.lines() == ["record 1 False"] * 40
    assert wall < 4.0, f"40 probes of a full backlog took {wall:.1f} s of wall time"
    for client in queued:
        client.close()
    server.close()
