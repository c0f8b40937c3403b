"""What `pip install bc-testbed` gives a user who never clones the repository: the wheel
carries the scenario catalog, and a named scenario resolves, plans and runs from any
folder. The wheel is built from this checkout and installed into a fresh virtual
environment; its dependencies are borrowed from the checkout's own environment (a `.pth`
line: the folder is added to the path, its own `.pth` files, among them the editable
install of this checkout, are not run), so the test needs no index."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEFT_BEHIND = (".git", ".venv", ".testbed", "build", "*.egg-info", "__pycache__", "*.so")


def _run(*argv: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this checkout installed; returns its bin folder."""
    work = tmp_path_factory.mktemp("wheel")
    # A copy without what earlier builds left (a stale build/ would hide a missing file).
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
    built = _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work, source, cwd=work
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = work.glob("bc_testbed-*.whl")
    venv = work / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    added = _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "-q",
        "--no-deps",
        wheel,
        cwd=work,
    )
    assert added.returncode == 0, added.stderr
    (site_packages,) = venv.glob("lib/python*/site-packages")
    (site_packages / "borrowed-dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    return venv / "bin"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty folder: no `scenarios/` beside it, no checkout above it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_installed_package_is_the_wheel_not_this_checkout(
    installed: Path, elsewhere: Path
) -> None:
    probe = _run(
        installed / "python", "-c", "import testbed; print(testbed.__file__)", cwd=elsewhere
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(installed.parent)


def test_the_wheel_lists_the_whole_catalog_from_any_folder(
    installed: Path, elsewhere: Path
) -> None:
    listed = _run(installed / "testbed", "list", cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    for scenario in sorted((ROOT / "scenarios").glob("*.yaml")):
        assert scenario.stem in listed.stdout


def test_the_wheel_plans_a_catalog_scenario_by_name(installed: Path, elsewhere: Path) -> None:
    planned = _run(installed / "testbed", "plan", "wan-outage-long", "--json", cwd=elsewhere)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert "site2" in json.dumps(plan)


def test_a_users_own_scenarios_folder_wins_over_the_shipped_catalog(
    installed: Path, elsewhere: Path
) -> None:
    mine = (ROOT / "scenarios" / "wan-outage-long.yaml").read_text()
    (elsewhere / "scenarios").mkdir()
    edited = mine.replace("description:", "description: MY OWN COPY -", 1)
    (elsewhere / "scenarios" / "wan-outage-long.yaml").write_text(edited)
    listed = _run(installed / "testbed", "list", cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert "MY OWN COPY" in listed.stdout


def test_the_wheel_runs_a_catalog_scenario_from_an_empty_folder(
    installed: Path, elsewhere: Path
) -> None:
    ran = _run(installed / "testbed", "run", "wan-outage-short", cwd=elsewhere, timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "wan-outage-short: PASS" in ran.stdout
    (report,) = (elsewhere / ".testbed" / "reports").glob("wan-outage-short-*/report.json")
    assert json.loads(report.read_text())["passed"] is True
