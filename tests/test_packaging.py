"""An installed tale_opt (not the editable checkout) finds its configs from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install --no-deps --target` of a copy of the project (the build writes into the
    tree it builds, so it builds a copy, never the checkout)."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("tale_opt", "searchers"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # Only the installed copy on the path (the dependencies come from this interpreter).
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_installed_package_composes_its_config_from_another_directory(installed, tmp_path):
    where = run_installed(installed, tmp_path, "-c", "import tale_opt; print(tale_opt.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(installed)
    assert (installed / "tale_opt" / "conf" / "config.yaml").is_file()
    assert (installed / "tale_opt" / "conf" / "hydra" / "launcher" / "slurm.yaml").is_file()

    proc = run_installed(installed, tmp_path, "-m", "tale_opt", "task=boolq", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.task.name == "boolq" and cfg.searcher.name == "tale"

    # The group pre-check reads the installed configs too.
    bad = run_installed(installed, tmp_path, "-m", "tale_opt", "task=boolqq")
    assert bad.returncode == 2 and "Did you mean 'boolq'?" in bad.stderr
