"""The package's dependency direction, checked by reading every module's imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def imports_of(path: Path) -> set[str]:
    """Top-level module names (and tale_opt submodules) imported anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", modules("searchers"), ids=lambda p: p.name)
def test_searchers_import_only_the_stdlib_and_tale_opt_types(path):
    for name in imports_of(path):
        assert top(name) in STDLIB | {"searchers"} or name == "tale_opt.types", (
            f"{path.name} imports {name}: searchers may use only the stdlib and tale_opt.types"
        )


def test_types_is_stdlib_only():
    assert {top(n) for n in imports_of(ROOT / "tale_opt" / "types.py")} <= STDLIB


# The only places allowed to import each library (relative to tale_opt/).
ALLOWED = {
    "optuna": ("coordination/",),
    "mlflow": ("tracking/",),
    "hydra": ("commands/",),
    "omegaconf": ("commands/",),
}


@pytest.mark.parametrize("path", modules("tale_opt"), ids=lambda p: str(p.relative_to(ROOT)))
def test_framework_libraries_stay_in_their_layer(path):
    rel = path.relative_to(ROOT / "tale_opt").as_posix()
    for name in imports_of(path):
        lib = top(name)
        if lib in ALLOWED:
            assert rel.startswith(ALLOWED[lib]), (
                f"tale_opt/{rel} imports {lib}, which only {ALLOWED[lib]} may import"
            )


@pytest.mark.parametrize("layer", ["model", "tasks", "evaluation"])
def test_model_tasks_and_evaluation_do_not_import_coordination_or_tracking(layer):
    for path in modules(f"tale_opt/{layer}"):
        for name in imports_of(path):
            assert not name.startswith(("tale_opt.coordination", "tale_opt.tracking")), (
                f"{path.relative_to(ROOT)} imports {name}"
            )


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the tale_opt modules it imports, at module level or inside a function (a
    deferred import still ties the two modules together)."""
    paths = {_module_name(p): p for p in modules("tale_opt")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` imports the module pkg.mod when there is one.
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in paths
                    else node.module
                    for a in node.names
                ]
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_inside_tale_opt():
    assert import_cycles(import_graph()) == []


@pytest.mark.parametrize("path", modules("tale_opt/coordination"), ids=lambda p: p.name)
def test_coordination_knows_searchers_only_through_their_base(path):
    # The early-stopping rule workers apply is the base's, not one concrete searcher's.
    for name in imports_of(path):
        if top(name) == "searchers":
            assert name == "searchers.base", (
                f"{path.relative_to(ROOT)} imports {name}; coordination uses searchers.base only"
            )
