"""The package's imports point down the stages of the data flow, and never in a circle.

cli -> scenarios -> (verdict, operations) -> pipeline -> the vocabulary (topology, clock,
errors, servers, backends, the WAN). Read from the source with `ast`, every import counts,
including those inside functions and under `TYPE_CHECKING`: a lazy import upward is still
a dependency upward.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "testbed"

# The higher the rank, the higher the stage. Siblings of one rank may not import each other.
STAGES = {
    "pipeline": 1,
    "verdict": 2,
    "operations": 2,
    "scenarios": 3,
    "cli": 4,
    # Entry points: the pytest plugin, `python -m testbed`, the Chaos Toolkit extension.
    "pytest_plugin": 5,
    "__main__": 5,
    "chaostoolkit": 5,
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage_of(module: str) -> str:
    """The stage a module belongs to: its first name under `testbed`, or the vocabulary."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return "entry point" if STAGES[parts[1]] == 5 else parts[1]
    return "vocabulary"


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's own modules that `source` imports (a `from X import name` counts as
    importing `X.name` when that is a module)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [n if n in known else base for n in names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import testbed.x.y` names the module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(files)
    return {
        name: imports_of(path.read_text(), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = stage_of(module)
        for target in sorted(targets):
            theirs = stage_of(target)
            if theirs == mine:
                continue
            rank_mine, rank_theirs = _rank(mine), _rank(theirs)
            if rank_theirs >= rank_mine:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    return wrong


def _rank(stage: str) -> int:
    return 5 if stage == "entry point" else STAGES.get(stage, 0)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), package
    `__init__` modules left out: importing `a.b` runs `a/__init__` first, which is not a
    dependency of `a.b` on `a`'s contents."""
    edges = {m: {t for t in ts if not _is_package(t, graph)} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _is_package(module: str, graph: dict[str, set[str]]) -> bool:
    return any(other.startswith(module + ".") for other in graph)


def test_no_module_imports_a_stage_above_its_own() -> None:
    assert upward_imports(import_graph(PACKAGE)) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_every_module_is_placed_in_a_stage_or_the_vocabulary() -> None:
    graph = import_graph(PACKAGE)
    stages = {stage_of(m) for m in graph}
    assert {"pipeline", "scenarios", "verdict", "operations", "cli", "vocabulary"} <= stages


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    root = tmp_path / "testbed"
    for folder in ("pipeline", "verdict", "operations"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "clock.py").write_text("import json\n")
    (root / "pipeline" / "gim.py").write_text("from testbed import clock\n")
    return root


def test_an_upward_import_is_caught_even_inside_a_function(fake_package: Path) -> None:
    (fake_package / "verdict" / "checks.py").write_text("from testbed.pipeline import gim\n")
    (fake_package / "pipeline" / "icon.py").write_text(
        "def f():\n    from testbed.verdict.checks import x\n"
    )
    (fake_package / "clock.py").write_text("from .pipeline import gim\n")
    assert upward_imports(import_graph(fake_package)) == [
        "testbed.clock (vocabulary) imports testbed.pipeline.gim (pipeline)",
        "testbed.pipeline.icon (pipeline) imports testbed.verdict.checks (verdict)",
    ]


def test_siblings_of_one_rank_may_not_import_each_other(fake_package: Path) -> None:
    (fake_package / "operations" / "dr.py").write_text("import testbed.verdict\n")
    assert upward_imports(import_graph(fake_package)) == [
        "testbed.operations.dr (operations) imports testbed.verdict (verdict)"
    ]


def test_a_circle_is_caught_even_through_type_checking(fake_package: Path) -> None:
    (fake_package / "pipeline" / "a.py").write_text("from testbed.pipeline.b import B\n")
    (fake_package / "pipeline" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from testbed.pipeline import a\n"
    )
    assert cycles(import_graph(fake_package)) == [["testbed.pipeline.a", "testbed.pipeline.b"]]


# The judge stands alone: the model and the checks read the documented rules, the
# documented periods and a run's recorded folder, never the code they judge, and never a
# live server. Transitively: a helper imported on the way counts.
JUDGE = "testbed.verdict"
NOT_FOR_THE_JUDGE = (
    "testbed.pipeline",
    "testbed.postgres",
    "testbed.deployment",
    "testbed.backends",
    "testbed.netfault",
)


def judge_leans_on(graph: dict[str, set[str]]) -> list[str]:
    """Each module the judge reaches that it must not, with the path it is reached by."""
    wrong = []
    for start in sorted(m for m in graph if m == JUDGE or m.startswith(JUDGE + ".")):
        seen, queue = {start: [start]}, [start]
        while queue:
            module = queue.pop(0)
            for target in sorted(graph.get(module, ())):
                if target in seen:
                    continue
                seen[target] = [*seen[module], target]
                if target.startswith(NOT_FOR_THE_JUDGE):
                    wrong.append(" -> ".join(seen[target]))
                else:
                    queue.append(target)
    return wrong


def test_the_model_and_checks_import_nothing_of_what_they_judge() -> None:
    assert judge_leans_on(import_graph(PACKAGE)) == []


def test_a_judge_reaching_the_pipeline_through_a_helper_is_caught(fake_package: Path) -> None:
    (fake_package / "helper.py").write_text("from testbed.pipeline import gim\n")
    (fake_package / "verdict" / "checks.py").write_text("from testbed import helper\n")
    assert judge_leans_on(import_graph(fake_package)) == [
        "testbed.verdict.checks -> testbed.helper -> testbed.pipeline.gim"
    ]


def test_the_model_loads_without_a_database_driver() -> None:
    """The proof the static rule stands for: with psycopg unimportable, the reference
    model, the checks and the reports still load."""
    probe = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import testbed.verdict.prediction, testbed.verdict.checks, testbed.verdict.report\n"
        "assert 'psycopg' not in {m for m in sys.modules if sys.modules[m] is not None}\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
