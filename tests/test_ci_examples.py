"""The CI recipes in examples/ci/ work as written: both run the same commands, and those
commands, run here in a scratch copy of the checkout whose catalog holds one short
scenario, leave what the recipes keep: a JUnit XML with the scenario's figures, and the
scenario's report.html."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ci"
LEFT_OUT = (".git", ".venv", ".testbed", "build", "*.egg-info", "__pycache__", "scenarios")


def github_commands() -> list[str]:
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    (job,) = workflow["jobs"].values()
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def gitlab_commands() -> list[str]:
    (job,) = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text()).values()
    return [command.strip() for command in job["script"]]


def kept_paths() -> tuple[str, list[str]]:
    """What each recipe keeps: GitHub's artifact path, GitLab's paths."""
    (job,) = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())["jobs"].values()
    (upload,) = (s for s in job["steps"] if s.get("uses", "").startswith("actions/upload"))
    (gitlab,) = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text()).values()
    return upload["with"]["path"], gitlab["artifacts"]["paths"]


def test_both_recipes_run_the_same_commands_and_keep_the_same_folder() -> None:
    assert github_commands() == gitlab_commands()
    assert github_commands()[0] == "./bin/bootstrap"
    github, gitlab = kept_paths()
    assert [github] == gitlab
    junit = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())
    (job,) = junit.values()
    assert job["artifacts"]["reports"]["junit"].startswith(github.rstrip("/"))


def test_the_recipes_commands_leave_junit_xml_and_each_scenarios_report(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(*LEFT_OUT))
    (checkout / ".venv").symlink_to(ROOT / ".venv")  # installed already: bootstrap says nothing
    (checkout / "scenarios").mkdir()
    shutil.copy2(ROOT / "scenarios" / "wan-outage-short.yaml", checkout / "scenarios")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}

    for command in github_commands():
        done = subprocess.run(
            shlex.split(command), cwd=checkout, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    kept = checkout / kept_paths()[0]
    suite = ET.parse(kept / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "0")
    (case,) = suite.iter("testcase")
    assert case.get("name") == "wan-outage-short"
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["lost_events"] == "{'site1': 0, 'site2': 0}"
    report = kept / "reports" / "wan-outage-short" / "report.html"
    assert "wan-outage-short: PASS" in report.read_text()
    assert properties["report"] == str(report.relative_to(checkout))
