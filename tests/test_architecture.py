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
    assert not graph["evaluation"] & {"calibration"}  # scores live in metrics.scores
    assert not graph["runs"] & {"training", "pretraining", "evaluation", "calibration"}


def test_metrics_and_plotting_sit_below_every_stage() -> None:
    """metrics and plotting import no stage; calibration, compare, probe and xai use them,
    never the eval stage's package."""
    graph = _graph()
    stages = {"evaluation", "calibration", "compare", "probe", "xai", "export", "training"}
    assert not graph["metrics"] & (stages | {"plotting", "policies"})
    assert not graph["plotting"] & (stages - {"evaluation"} | {"evaluation"})
    assert not graph["policies"] & stages
    for user in ("calibration", "compare", "probe", "xai"):
        assert "evaluation" not in graph[user], user


def _module_graph() -> dict[str, set[str]]:
    """rigor module -> the rigor modules it imports (``from a import b`` counts ``a.b`` when
    that is a module), lazy imports included."""
    modules = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        modules[".".join(rel.parts).removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {  # imports under ``if TYPE_CHECKING:`` never run
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_inside_a_package() -> None:
    graph = _module_graph()
    cycles = []
    for start in graph:
        inside = {m for m in graph if _package(m) == _package(start)}
        todo, seen = [t for t in graph[start] if t in inside], set()
        while todo:
            node = todo.pop()
            if node == start:
                cycles.append(start)
                break
            if node not in seen:
                seen.add(node)
                todo.extend(t for t in graph.get(node, ()) if t in inside)
    assert sorted(cycles) == []


def _private_torch_uses(source: str) -> list[str]:
    """The ``torch._*`` modules and attributes ``source`` imports or reads (``torch._C``,
    ``from torch._utils import ...``, ``torch.serialization._x``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Attribute):
            names = [ast.unparse(node)]
        found += [
            n
            for n in names
            if n.startswith("torch.") and any(p.startswith("_") for p in n.split(".")[1:])
        ]
    return found


def _private_torch_imports() -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for path in SRC.rglob("*.py")
        if _private_torch_uses(path.read_text())
    )


def _crowded_packages() -> list[str]:
    packages = [p.parent for p in SRC.rglob("__init__.py")]
    return sorted(str(p.relative_to(SRC)) for p in packages if len(list(p.glob("*.py"))) > 12)


def test_the_private_torch_check_sees_what_it_should() -> None:
    source = (
        "import torch\nfrom torch._C import PyTorchFileWriter\nimport torch._dynamo\n"
        "x = torch._C._get_tensor_metadata\ny = torch.serialization._get_storage_alignment\n"
        "z = torch.nn.functional.relu\nfrom torch.utils.data import DataLoader\n"
    )
    assert set(_private_torch_uses(source)) == {
        "torch._C",
        "torch._C.PyTorchFileWriter",
        "torch._dynamo",
        "torch._C._get_tensor_metadata",
        "torch.serialization._get_storage_alignment",
    }


def test_no_private_torch_import() -> None:
    assert _private_torch_imports() == []


def test_no_package_holds_more_than_twelve_modules() -> None:
    assert _crowded_packages() == []
