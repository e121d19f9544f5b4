"""The shape of src/rigor: imports only run down, and modules and functions stay small."""

from __future__ import annotations

import ast
from collections import defaultdict

from conftest import ROOT

SRC = ROOT / "src" / "rigor"
STAGES_THAT_READ_RUNS = ("evaluation", "calibration", "xai", "export")


def _unit(module: str) -> str:
    """The package (or top-level module) of ``rigor.a.b``: ``a``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports() -> dict[str, set[tuple[str, str]]]:
    """package -> {(imported module, importing file)}, lazy imports inside functions too."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        unit = _unit(".".join(rel.parts).removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            found[unit] |= {(name, str(path.relative_to(ROOT))) for name in names}
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for unit, imported in _imports().items():
        for name, _ in imported:
            if name.startswith("rigor.") and _unit(name) != unit:
                graph[unit].add(_unit(name))
    return graph


def test_no_package_forms_a_cycle_with_another() -> None:
    graph = _graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    cycles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert cycles == []


def test_stages_that_read_runs_never_import_the_trainer() -> None:
    graph = _graph()
    for stage in STAGES_THAT_READ_RUNS:
        assert not graph[stage] & {"training", "pretraining"}, stage
    assert not graph["evaluation"] & {"calibration"}  # scores live in evaluation.scores
    assert not graph["runs"] & {"training", "pretraining", "evaluation", "calibration"}


def test_config_and_manifest_never_import_torch() -> None:
    imports = _imports()
    for package in ("config", "manifest"):
        heavy = sorted(f for name, f in imports[package] if name.split(".")[0] == "torch")
        assert heavy == [], package


def test_modules_and_functions_stay_small() -> None:
    long_modules, long_functions = [], []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 350:
            long_modules.append(str(path.relative_to(ROOT)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                if node.end_lineno - node.lineno + 1 > 60:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert long_modules == [] and long_functions == []
