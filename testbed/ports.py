"""Choosing ports to listen on, outside the kernel's ephemeral range.

A listening port is chosen once and bound again and again: an ICON binds it at every restart,
a server at every start, a published container port for the run's life. A port from the
ephemeral range (what `bind(("", 0))` hands out) may meanwhile become the local end of one of
the hundreds of outgoing connections a run makes, and the next bind fails with "address
already in use". Ports below that range are never handed to outgoing connections, so only
another listener can take them, and a check just before use catches that.

A check is not a reservation, though: a run asks for ports many times (servers, proxies,
ICONs, published ports), and two runs ask at once, so the same free port could be handed to
two holders before either binds it (about 3 % of runs with thirty ports each, by the
birthday bound). So every port handed out is *leased* on the machine: a file named after
the port in one folder shared by every user, holding the holder's process id and start
time. A lease holds until its holder releases it or ends (a killed run's leases lapse with
its process: nothing to clean up), and no other holder is handed a leased port. Allocation
is serialised machine-wide by a lock on that folder (`flock`, dropped by the kernel when
its process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from testbed import procs

LOOPBACK = "127.0.0.1"
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL_RANGE = (32768, 60999)
LOWEST_LISTEN_PORT = 20000  # above the well-known and most registered service ports
MIN_RANGE_SIZE = 1000
LEASES_ENV = "TESTBED_PORT_LEASES"  # another folder for the leases (tests)


def ephemeral_range() -> tuple[int, int]:
    """Where the kernel picks local ports for outgoing connections."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL_RANGE
    return low, high


def listen_range() -> tuple[int, int] | None:
    """A band of ports outside the ephemeral range, or None when the kernel leaves none
    worth using (then any unprivileged port will do)."""
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
    """`count` distinct ports, free on `host` now, outside the ephemeral range, and leased
    to this process until it releases them (`release`) or ends."""
    band = listen_range() or (1024, 65535)
    chosen: list[int] = []
    with _allocation_lock() as leases:
        for _ in range(count * 200):
            port = random.randint(*band)
            if port in chosen or not leases.take(port):
                continue
            if port_is_free(host, port):
                chosen.append(port)
                if len(chosen) == count:
                    return chosen
            else:
                leases.drop(port)  # someone outside the testbed listens there
    release(chosen)
    raise OSError(f"no {count} free ports to lease in {band[0]}-{band[1]} on {host}")


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def release(ports: list[int]) -> None:
    """End this process's leases on `ports` (a run that ended)."""
    with _allocation_lock() as leases:
        for port in ports:
            leases.drop(port)


def hand_over(folder: Path) -> None:
    """This process's leases now hold for as long as `folder` exists: a run left running
    (`testbed up --detach`) outlives the command that started it, and its servers and
    ICONs bind their ports again at every restart until `testbed down` removes it."""
    holder = f"run {folder.absolute()}"
    with _allocation_lock() as leases:
        for port in sorted(_held):
            with contextlib.suppress(OSError):
                (leases.folder / str(port)).write_text(holder)
        _held.clear()


def held() -> set[int]:
    """The ports leased to this process now."""
    with _thread_lock:
        return set(_held)


def leases_folder() -> Path:
    """One folder for the whole machine, whoever runs the testbed: sticky and writable by
    all, as /tmp itself (a lease is removed only by its holder, or once it lapsed)."""
    folder = Path(os.environ.get(LEASES_ENV) or Path(tempfile.gettempdir()) / "bc-testbed-ports")
    if not folder.is_dir():
        with contextlib.suppress(FileExistsError):
            folder.mkdir(parents=True)
            folder.chmod(0o1777)
    return folder


_thread_lock = threading.Lock()  # flock is per open file: threads of one process take turns
_held: set[int] = set()  # this process's leases (the files say so too; this saves reading them)


@contextlib.contextmanager
def _allocation_lock() -> Iterator[_Leases]:
    folder = leases_folder()
    with _thread_lock:
        # Read-only is enough to lock, and works on a lock file another user made.
        fd = os.open(folder / ".lock", os.O_RDONLY | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)  # ours: open to every user, whatever the umask
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield _Leases(folder)
        finally:
            os.close(fd)  # and with it the lock


class _Leases:
    """The lease files, under the allocation lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.me = _identity(os.getpid())

    def take(self, port: int) -> bool:
        """Lease `port` to this process; False if a live holder has it."""
        path = self.folder / str(port)
        try:
            holder = path.read_text()
        except FileNotFoundError:
            holder = None
        except OSError:
            return False
        if holder is not None and _alive(holder):
            return False
        tmp = self.folder / f".{port}.{os.getpid()}.{threading.get_ident()}"
        try:
            tmp.write_text(self.me)
            tmp.chmod(0o644)
            os.replace(tmp, path)  # a lapsed lease is replaced in one step
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        _held.add(port)
        return True

    def drop(self, port: int) -> None:
        """End this process's lease on `port` (another holder's is left alone)."""
        _held.discard(port)
        path = self.folder / str(port)
        with contextlib.suppress(OSError):
            if path.read_text() == self.me:
                path.unlink()


def _identity(pid: int) -> str:
    """A process id with its start time: a recycled pid is another holder."""
    return f"{pid} {procs.start_time(pid)}"


def _alive(holder: str) -> bool:
    if holder.startswith("run "):
        try:
            return stat.S_ISDIR(os.stat(holder.removeprefix("run ").strip()).st_mode)
        except PermissionError:
            return True  # another user's run, behind a folder we may not enter: held
        except OSError:
            return False  # gone: `testbed down` removed it
    pid_text, _, start = holder.strip().partition(" ")
    if not pid_text.isdigit():
        return False  # torn or foreign: lapsed
    return procs.start_time(int(pid_text)) == start
