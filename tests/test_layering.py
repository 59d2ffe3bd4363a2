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
    "hydra": ("cli.py",),
    "omegaconf": ("cli.py", "export_cli.py"),
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


@pytest.mark.parametrize("path", modules("tale_opt/coordination"), ids=lambda p: p.name)
def test_coordination_knows_searchers_only_through_their_base(path):
    # The early-stopping rule workers apply is the base's, not one concrete searcher's.
    for name in imports_of(path):
        if top(name) == "searchers":
            assert name == "searchers.base", (
                f"{path.relative_to(ROOT)} imports {name}; coordination uses searchers.base only"
            )
