"""Listening ports are chosen where outgoing connections never land."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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


STRESS_WORKER = """
import os, sys, threading, time
from pathlib import Path
from testbed import ports

marks = Path(sys.argv[1])
rounds = int(sys.argv[2])
failures = []

def work():
    for _ in range(rounds):
        (port,) = ports.free_ports(1)
        try:
            fd = os.open(marks / str(port), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            failures.append(port)  # another holder has it right now
            continue
        os.close(fd)
        time.sleep(0.005)  # held a while, as a run holds its ports
        os.unlink(marks / str(port))
        ports.release([port])

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(failures))
"""


@pytest.fixture
def private_leases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "leases"
    monkeypatch.setenv(ports.LEASES_ENV, str(folder))
    return folder


def test_no_port_is_handed_to_two_holders_at_once_across_threads_and_processes(
    private_leases: Path, tmp_path: Path
) -> None:
    # 4 processes x 8 threads x 313 rounds: 10,016 allocations, each holding its port (a
    # marker file only one holder can create) until it releases it.
    marks = tmp_path / "marks"
    marks.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", STRESS_WORKER, str(marks), "313"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, ports.LEASES_ENV: str(private_leases)},
        )
        for _ in range(4)
    ]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0, 0]
    assert [int(out) for out in outputs] == [0, 0, 0, 0]
    assert not [p for p in private_leases.iterdir() if p.name.isdigit()]  # all released


def test_a_port_stays_leased_across_calls_until_released(private_leases: Path) -> None:
    first = ports.free_ports(20)
    assert ports.held() >= set(first)
    for _ in range(20):
        assert not set(ports.free_ports(10)) & set(first)
    ports.release(first)
    assert not ports.held() & set(first)
    assert not any((private_leases / str(port)).exists() for port in first)


def test_a_killed_holders_leases_lapse_with_it(private_leases: Path) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom testbed import ports\n"
            "print(*ports.free_ports(5), flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, ports.LEASES_ENV: str(private_leases)},
    )
    assert child.stdout is not None
    taken = [int(p) for p in child.stdout.readline().split()]
    with ports._allocation_lock() as leases:
        assert not any(leases.take(port) for port in taken)  # held by a live process
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    with ports._allocation_lock() as leases:
        assert all(leases.take(port) for port in taken)  # lapsed with it: nothing to clean
    ports.release(taken)


def test_a_detached_runs_leases_hold_while_its_folder_exists(
    private_leases: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import sys\nfrom pathlib import Path\nfrom testbed import ports\n"
        "print(*ports.free_ports(3))\nports.hand_over(Path(sys.argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, ports.LEASES_ENV: str(private_leases)},
        check=True,
    )
    taken = [int(p) for p in result.stdout.split()]
    with ports._allocation_lock() as leases:
        assert not any(leases.take(port) for port in taken)  # its command ended; it did not
    run.rmdir()  # `testbed down` removed it
    with ports._allocation_lock() as leases:
        assert all(leases.take(port) for port in taken)
    ports.release(taken)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a folder another user cannot enter")
def test_a_lease_behind_a_folder_another_user_cannot_enter_is_held_not_a_traceback(
    tmp_path: Path,
) -> None:
    # A root test run leaves a detached run's leases naming a folder under its private
    # temporary root; a user without root allocating next must skip those ports, not crash.
    from testbed.backends.osuser import server_user

    account = server_user()
    leases = Path(tempfile.mkdtemp(prefix="bc-testbed-leases-"))
    try:
        leases.chmod(0o1777)
        private = tmp_path / "private"
        (private / "run").mkdir(parents=True)
        private.chmod(0o700)
        (leases / "20001").write_text(f"run {private / 'run'}")
        code = (
            "import os, sys\nfrom testbed import ports\n"
            f"os.setgid({account.gid}); os.setgroups([]); os.setuid({account.uid})\n"
            "with ports._allocation_lock() as leases:\n"
            "    print(leases.take(20001), leases.take(20002))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, ports.LEASES_ENV: str(leases)},
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["False", "True"]  # held; free
    finally:
        shutil.rmtree(leases, ignore_errors=True)
