"""tale_opt uses Optuna's public API only, outside its one adapter module, and importing it
changes nothing global (Optuna's log level, Python's warning filters)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = "coordination/optuna_adapter.py"
# Private names of Optuna objects tale_opt once reached for, forbidden anywhere outside the
# adapter (whatever the object is called there).
KNOWN_PRIVATE = {"_trial_id", "_storage", "_study_id", "_backend", "_thread_local"}


def imports_optuna(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "optuna" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna":
            return True
    return False


def private_uses(source: str) -> list[str]:
    """Where `source` reaches into Optuna's private names, one line each."""
    tree = ast.parse(source)
    uses_optuna = imports_optuna(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
            names = node.module.split(".") + [a.name for a in node.names]
            if any(n.startswith("_") for n in names):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "optuna" and any(p.startswith("_") for p in parts):
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute):
            name = node.attr
            private = name.startswith("_") and not name.startswith("__")
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            # In a module that uses Optuna, a private attribute of anything but our own
            # object (self / cls) is presumed to be Optuna's.
            if name in KNOWN_PRIVATE or (uses_optuna and private and owner not in ("self", "cls")):
                found.append(f"line {node.lineno}: .{name}")
    return found


def modules() -> list[Path]:
    return sorted((ROOT / "tale_opt").rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_tale_opt_uses_only_optunas_public_api_outside_the_adapter(path):
    rel = path.relative_to(ROOT / "tale_opt").as_posix()
    if rel == ADAPTER:
        return
    found = private_uses(path.read_text())
    assert not found, (
        f"tale_opt/{rel} uses private Optuna names ({'; '.join(found)}): use the public API "
        f"(trial.number, study.tell(..., skip_if_finished=True), the storage from open_storage) "
        f"or move the code into tale_opt/{ADAPTER} with a canary test"
    )


def test_the_checker_finds_what_it_is_for():
    code = (
        "import optuna\n"
        "from optuna.storages._heartbeat import BaseHeartbeat\n"
        "x = trial._trial_id\n"
        "study._storage.get_trial(1)\n"
        "optuna.storages._heartbeat.is_heartbeat_enabled(s)\n"
        "self._mine = 1\n"
    )
    found = private_uses(code)
    assert [f.split(":")[0] for f in found] == ["line 2", "line 3", "line 4", "line 5"]
    assert private_uses("self._cache = {}\nvalue = trial.number\n") == []


def test_the_adapter_is_where_the_private_names_are():
    assert private_uses((ROOT / "tale_opt" / ADAPTER).read_text()), (
        "the adapter no longer uses anything private: drop its exemption and canary test"
    )


def test_importing_tale_opt_leaves_optuna_logging_and_warning_filters_alone():
    # A fresh interpreter: this one has imported tale_opt already.
    code = """
import json, warnings
import optuna, sqlalchemy
before = (optuna.logging.get_verbosity(), [repr(f) for f in warnings.filters])
import tale_opt.coordination.coordinator, tale_opt.coordination.worker
import tale_opt.coordination.storage, tale_opt.coordination.study
import tale_opt.coordination.optuna_adapter, tale_opt.coordination.console
import tale_opt.commands.search, tale_opt.commands.worker, tale_opt.pipeline.worker
import tale_opt.pipeline.run
after = (optuna.logging.get_verbosity(), [repr(f) for f in warnings.filters])
print(json.dumps([before, after]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert after == before


def test_the_command_line_quiets_optuna_at_startup():
    from tale_opt.coordination.console import quiet_optuna

    verbosity = optuna.logging.get_verbosity()
    with warnings.catch_warnings():  # restores the filters afterwards
        optuna.logging.set_verbosity(optuna.logging.INFO)
        try:
            quiet_optuna()
            assert optuna.logging.get_verbosity() == optuna.logging.WARNING
            assert any(
                f[0] == "ignore" and f[2] is optuna.exceptions.ExperimentalWarning
                for f in warnings.filters
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
