"""`bin/bootstrap` on machines poorer than the one the suite runs on: it must get past a
missing C compiler, and every way it stops must say in one line which stage failed and
where its log is. Each test runs the real script in a scratch copy of the checkout's
inputs, with a PATH that holds only the tools a minimal Debian has."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a minbase Debian has on PATH; no compiler among them.
BASE_TOOLS = ("bash", "env", "cat", "sha256sum", "cut", "mkdir", "tail", "id", "dirname", "rm")


def _scratch_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    (checkout / "bin").mkdir(parents=True)
    (checkout / "testbed" / "netfault").mkdir(parents=True)
    shutil.copy2(ROOT / "bin" / "bootstrap", checkout / "bin" / "bootstrap")
    shutil.copy2(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    relay = "testbed/netfault/_relayloop.c"
    shutil.copy2(ROOT / relay, checkout / relay)
    return checkout


def _bare_path(tmp_path: Path) -> Path:
    """A PATH folder with the base tools and Python, and nothing that compiles."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in BASE_TOOLS:
        found = shutil.which(name)
        assert found, f"{name} is not on this machine"
        (tools / name).symlink_to(found)
    (tools / "python3").symlink_to(sys.executable)
    return tools


def _bootstrap(checkout: Path, tools: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(tools), "HOME": str(checkout), "LANG": "C.UTF-8"}
    env["PYTHON"] = str(tools / "python3")
    return subprocess.run(
        [str(tools / "bash"), str(checkout / "bin" / "bootstrap")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_no_compiler_is_not_a_silent_failure(tmp_path: Path) -> None:
    """Without a compiler bootstrap goes on to the install. The install is made to fail
    (a broken pyproject.toml), so the test stays fast and offline; the last line names it."""
    checkout = _scratch_checkout(tmp_path)
    tools = _bare_path(tmp_path)
    assert not any(shutil.which(cc, path=str(tools)) for cc in ("cc", "gcc", "clang"))
    (checkout / "pyproject.toml").write_text("[project\nthis is not TOML\n")

    done = _bootstrap(checkout, tools)

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "bootstrap: no C compiler or Python headers" in done.stderr
    assert "bootstrap: installing bc-testbed and its dependencies" in done.stderr
    assert (
        "bootstrap: installing bc-testbed failed; its output is in .testbed/bootstrap.log" in lines
    )
    assert (checkout / ".testbed" / "bootstrap.log").stat().st_size > 0


def test_an_unexpected_failure_names_its_stage_and_the_log(tmp_path: Path) -> None:
    """A command nobody guarded (here: an input of the install stamp is missing) is caught
    by the ERR trap, once, with the stage it stopped in."""
    checkout = _scratch_checkout(tmp_path)
    (checkout / "testbed" / "netfault" / "_relayloop.c").unlink()

    done = _bootstrap(checkout, _bare_path(tmp_path))

    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("bootstrap: ")]
    assert len(said) == 1, done.stderr
    assert said[0].startswith("bootstrap: checking .venv failed (exit ")
    assert said[0].endswith("its output is in .testbed/bootstrap.log")


def test_an_unwritable_checkout_is_said_in_one_line(tmp_path: Path) -> None:
    checkout = _scratch_checkout(tmp_path)
    (checkout / ".testbed").write_text("a file where the folder should be")

    done = _bootstrap(checkout, _bare_path(tmp_path))

    assert done.returncode == 2
    said = [line for line in done.stderr.splitlines() if line.startswith("bootstrap: ")]
    assert said == [f"bootstrap: cannot create .testbed/ in {checkout}: make the checkout writable"]
    assert os.path.isfile(checkout / ".testbed")
