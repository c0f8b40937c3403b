"""Where server data lives: RAM when there is room, disk on request, and always reachable
by the unprivileged server account, even when the run folder is not."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from testbed.backends import storage
from testbed.backends.local import LocalBackend
from testbed.errors import TestbedError


def _start_one(backend: LocalBackend) -> Path:
    server = backend.new_server("idb1").init().start()
    datadir = Path(server.scalar("SHOW data_directory"))
    server.execute("CREATE TABLE t AS SELECT 1 AS x")
    return datadir


def test_disk_storage_keeps_data_in_a_reachable_run_folder() -> None:
    reachable = Path(tempfile.mkdtemp(prefix="testbed-suite-", dir="/var/tmp"))
    reachable.chmod(0o755)
    try:
        with LocalBackend(home=reachable, storage="disk") as backend:
            datadir = _start_one(backend)
            assert datadir.is_relative_to(backend.run.path)
            assert not (backend.run.path / "data").is_symlink()
    finally:
        shutil.rmtree(reachable)


def test_an_unreachable_run_folder_gets_its_data_elsewhere_behind_a_link(tmp_path: Path) -> None:
    home = tmp_path / "private"
    home.mkdir(mode=0o700)
    private = (home.stat().st_mode & stat.S_IXOTH) == 0
    with LocalBackend(home=home, storage="disk") as backend:
        datadir = _start_one(backend)
        link = backend.run.path / "data"
        if os.geteuid() == 0 and private:
            assert link.is_symlink()
            assert datadir.is_relative_to(storage.DISK_FALLBACK_ROOT)
            assert datadir.is_relative_to(link.resolve())
        run_path, data_root = backend.run.path, backend.data_root
    assert not run_path.exists() and not data_root.exists()


@pytest.mark.skipif(not storage.ram_available(), reason="no tmpfs with room here")
def test_auto_storage_puts_data_in_ram_when_there_is_room(tmp_path: Path) -> None:
    with LocalBackend(home=tmp_path / "home", storage="auto") as backend:
        datadir = _start_one(backend)
        assert datadir.is_relative_to(storage.RAM_ROOT)
        assert (backend.run.path / "data").resolve() == backend.data_root


def test_an_unknown_storage_is_refused() -> None:
    with pytest.raises(TestbedError, match="storage 'floppy' is not one of: auto, ram, disk"):
        storage.storage_choice("floppy")
