"""Small, careful helpers for processes the testbed did not necessarily start itself.

`testbed down` must stop servers left behind by a crashed runner. Their pids come from a
file, so before signalling one we check it is still the process we recorded (pid reuse),
and a zombie counts as gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def state(pid: int) -> str | None:
    """The kernel's one-letter state (R, S, T, Z...), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot), None if there is none: with the
    pid, it names one process however often the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def run_state(pid: int | None) -> str:
    """stopped, paused or running, from one read of the kernel's state (it is asked at
    every instant of a virtual-time run)."""
    letter = state(pid) if pid is not None else None
    if letter in (None, "Z", "X"):
        return "stopped"
    return "paused" if letter in ("T", "t") else "running"


def paused(pid: int) -> bool:
    return state(pid) in ("T", "t")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_ours(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line mentions `marker` (say, its data directory)."""
    return alive(pid) and any(marker in arg for arg in cmdline(pid))


def _live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] not in ("Z", "X"):
            yield int(entry.name), int(fields[1]), int(fields[2])


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of the group remains."""
    try:
        os.killpg(pgid, 0)  # cheap: "no such group" settles it without reading /proc
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's group: only /proc can tell
    return any(group == pgid for _, _, group in _live_processes())


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`. PostgreSQL's backends each start a
    session of their own (so the postmaster can signal their groups), so signalling the
    postmaster's group does not reach them: they are found by their parent."""
    return [child for child, parent, _ in _live_processes() if parent == pid]


def signal_tree(pid: int, sig: int) -> None:
    """`sig` to the process group of `pid` and to every child of `pid`."""
    signal_group(pid, sig)
    for child in children(pid):
        signal_pid(child, sig)


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_group(pid: int, pgid: int, first: int = signal.SIGINT, timeout: float = 30.0) -> None:
    """Ask a process to stop, then insist: `first`, then SIGKILL to its whole group.

    A stopped (SIGSTOPped) process cannot act on a signal, so the group is continued first.
    """
    signal_group(pgid, signal.SIGCONT)
    signal_pid(pid, first)
    if wait_until(lambda: not alive(pid), timeout):
        wait_until(lambda: not group_alive(pgid), 5.0)
    signal_group(pgid, signal.SIGKILL)
    wait_until(lambda: not group_alive(pgid), 10.0)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C does: through the cleanup path. Ctrl-C
    too when started in the background of a shell script, which leaves SIGINT ignored (and
    Python then installs no handler for it)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


def run_stoppable(main: Callable[[], object]) -> None:
    """`main()` of a script (a benchmark) that starts servers: SIGTERM (a `timeout`, a CI
    cancel) and Ctrl-C stop what it started, through its cleanup, and end it with 130."""
    stop_on_signals()
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
