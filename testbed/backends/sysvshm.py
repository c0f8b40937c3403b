"""The System V segment a killed postmaster leaves behind.

PostgreSQL keeps a small System V segment per running server, as an interlock. A clean
shutdown removes it, and a server started again on the same data directory reclaims it. A
server killed for good (a lost site, or a crash at the end of a run whose data is then
deleted) leaves it for ever. The kernel allows `kernel.shmmni` of them (4096 by default),
and past that no server starts on the machine. So a testbed that kills servers must remove
the segment of each server it killed.

The postmaster writes the segment's key and id into its lock file (`postmaster.pid`,
line 7), and the lock file outlives a killed postmaster.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

IPC_RMID = 0
LOCK_FILE_SHMEM_LINE = 6  # 0-based: "key id" of the interlock segment
SEGMENTS = Path("/proc/sysvipc/shm")  # key, shmid, perms, size, cpid, lpid, nattch, ...
NATTCH = 6


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def segment_of(lock_file: Path) -> tuple[int, int] | None:
    """The (key, id) a lock file names, or None if it names none."""
    try:
        line = lock_file.read_text().splitlines()[LOCK_FILE_SHMEM_LINE]
        key, shmid = (int(word) for word in line.split())
    except (OSError, ValueError, IndexError):
        return None
    return key, shmid


def attachments(key: int, shmid: int) -> int | None:
    """How many processes have the segment with this key and id attached (None: there is
    no such segment)."""
    try:
        rows = SEGMENTS.read_text().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        words = row.split()
        if len(words) > NATTCH and int(words[0]) == key and int(words[1]) == shmid:
            return int(words[NATTCH])
    return None


def release_dead_postmasters_segment(lock_file: Path) -> bool:
    """Remove the segment named in a dead postmaster's lock file; whether one was removed.

    Only a segment nobody has attached goes: a backend that outlived its postmaster still
    holds it, and PostgreSQL refuses to start on that data directory while it does. The
    key is checked as well as the id, so an id the kernel has since given to another
    server's segment is left alone."""
    named = segment_of(lock_file)
    if named is None or attachments(*named) != 0:
        return False
    return int(_libc().shmctl(ctypes.c_int(named[1]), IPC_RMID, None)) == 0
