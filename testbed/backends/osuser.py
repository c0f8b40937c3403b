"""The unprivileged account PostgreSQL runs under when the testbed itself runs as root.

PostgreSQL refuses to start as root. Rather than asking users to `su`, the testbed creates
(once) a system account, starts every server as that account, and hands it the directories
the servers write to. Anything the servers must read on the way (run folder, cached
template) has to be reachable by that account, which `can_reach` checks from mode bits.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import TestbedError

DEFAULT_NAME = "testbed"


@dataclass(frozen=True)
class ServerUser:
    name: str
    uid: int
    gid: int

    @property
    def switches(self) -> bool:
        """True when processes must be started as another account than ours."""
        return self.uid != os.geteuid()

    def popen_kwargs(self) -> dict:
        if not self.switches:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        """Give `path` (recursively) to this account."""
        if not self.switches:
            return
        os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)

    def can_reach(self, path: Path) -> bool:
        """Whether this account can traverse every existing ancestor of `path`."""
        if not self.switches or self.uid == 0:
            return True
        groups = {self.gid} | {g.gr_gid for g in grp.getgrall() if self.name in g.gr_mem}
        current = Path(os.path.abspath(path))
        for ancestor in [current, *current.parents]:
            try:
                st = ancestor.stat()
            except FileNotFoundError:
                continue
            if st.st_uid == self.uid:
                ok = st.st_mode & stat.S_IXUSR
            elif st.st_gid in groups:
                ok = st.st_mode & stat.S_IXGRP
            else:
                ok = st.st_mode & stat.S_IXOTH
            if not ok:
                return False
        return True


def server_user() -> ServerUser:
    """Ourselves when not root; otherwise the unprivileged account, created if missing."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    name = os.environ.get("TESTBED_SERVER_USER", DEFAULT_NAME)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = _create(name)
    if entry.pw_uid == 0:
        raise TestbedError(f"TESTBED_SERVER_USER={name} is root; PostgreSQL refuses to run as root")
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _create(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)  # also covers a concurrent runner creating it first
    except KeyError:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise TestbedError(
            f"running as root, and could not create the unprivileged account '{name}' for "
            f"PostgreSQL ({detail[-1] if detail else 'useradd failed'}); create it or set "
            "TESTBED_SERVER_USER to an existing non-root account"
        ) from None
