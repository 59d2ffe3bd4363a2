"""Clusters through submitit: sweeps on `hydra/launcher=local|slurm` and `python -m tale_opt
workers` (a Slurm job array, or local processes).

There is no Slurm here. submitit's local executor runs the same job code as its Slurm
executor, so the searches and workers it runs are real; what only Slurm would do is pinned at
its boundary: the sbatch script submitit writes, read by a stand-in `sbatch` that records it.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tale_opt.commands.config import CONF_DIR
from tale_opt.commands.schema import register_schemas
from tests.test_cli import assert_usage_error, cli_env, run_cli
from tests.test_distributed_cli import (
    candidate_keys,
    outcome,
    reference,  # noqa: F401  (the in-process search every other way must equal)
    search_args,
    study_trials,
)

pytestmark = pytest.mark.slow


def hydra_launcher(*overrides: str) -> dict:
    """The `hydra.launcher` node a search composes with `overrides`."""
    from omegaconf import OmegaConf

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_the_slurm_preset_extends_submitits_launcher_and_takes_the_cluster_settings():
    launcher = hydra_launcher(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=lab"
    )
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["account"]) == ("gpu", "lab")
    assert (launcher["gpus_per_node"], launcher["timeout_min"]) == (1, 1440)
    assert launcher["max_num_timeout"] == 3  # a timed-out search is requeued and resumes
    local = hydra_launcher("hydra/launcher=local")
    assert local["_target_"].endswith("submitit_launcher.LocalLauncher")
    assert local["gpus_per_node"] == 0


def sweep_outcomes(sweep_dir: Path) -> dict[str, dict]:
    """Each job's outcome by its directory name (job number and overrides)."""
    return {p.parent.name: outcome(p.parent) for p in sorted(sweep_dir.glob("*/summary.json"))}


def test_a_sweep_on_submitits_local_launcher_equals_the_basic_launchers(tiny_model_dir, tmp_path):
    def sweep(storage: Path, *extra: str):
        return run_cli(
            "-m", f"model.path={tiny_model_dir}", "model.name=tiny", "n_opt=4,6", "n_eval=4",
            "searcher.max_drop=1", "eval.batch_size=4", "latency=null", "tracking=none",
            f"storage.path={storage}", *extra,
        )  # fmt: skip

    basic = sweep(tmp_path / "basic.db", f"hydra.sweep.dir={tmp_path / 'basic'}")
    assert basic.returncode == 0, basic.stderr[-3000:]
    # Hydra's default sweep directory: every job (in its own process) must land in the one
    # directory the command made, not in one it makes for itself.
    local = sweep(tmp_path / "local.db", "hydra/launcher=local")
    assert local.returncode == 0, local.stderr[-3000:]
    sweeps = [p.parent for p in (tmp_path / "multirun").glob("*/*/multirun.yaml")]
    assert len(sweeps) == 1, list((tmp_path / "multirun").rglob("*"))
    jobs = sweep_outcomes(sweeps[0])
    assert len(jobs) == 2 and jobs == sweep_outcomes(tmp_path / "basic")
    assert list((sweeps[0] / ".submitit").iterdir()), "the jobs ran through submitit"


def test_a_sweep_job_that_fails_on_its_node_is_one_line(tmp_path):
    proc = run_cli(
        "-m", "hydra/launcher=local", "model.path=/nonexistent/model", "n_opt=4,6",
        "tracking=none", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    # Each job fails on its node (its one-line error is in the job's log); the sweep's table
    # says why, and the command exits as bad input since every job was refused as such.
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "2 of 2 sweep jobs did not finish" in errors[0]
    assert proc.stdout.count("failed: model path '/nonexistent/model' does not exist") == 2


def test_local_submitit_workers_evaluate_a_search_with_the_in_process_result(
    tiny_model_dir,
    tmp_path,
    reference,  # noqa: F811
):
    storage, name = tmp_path / "trials.db", "submitit-workers"
    # Submitted first: the workers wait for the coordinator to create the study.
    workers = subprocess.Popen(
        [sys.executable, "-m", "tale_opt", "workers", "launcher=local", "count=2",
         "storage=sqlite", f"storage.path={storage}", f"study={name}", "wait=true",
         f"folder={tmp_path / 'jobs' / '%j'}", "idle_timeout=1800"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    args = search_args(tiny_model_dir, storage, run_dir, f"study={name}")
    # The coordinator evaluates nothing itself: every candidate is a submitit worker's.
    proc = run_cli(*args, "coordinator_evaluates=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed, errors = workers.communicate(timeout=1800)  # they leave once the study is finished
    assert workers.returncode == 0, errors[-3000:]
    assert outcome(run_dir) == reference["outcome"]
    keys = candidate_keys(study_trials(storage, name))
    assert len(keys) == len(set(keys)) == 8, "every candidate evaluated exactly once"
    assert "started 2 worker(s) of study submitit-workers on this machine" in printed
    left = [line for line in printed.splitlines() if line.startswith("worker ")]
    assert len(left) == 2, printed
    assert sum(int(line.split("left: ")[1].split()[0]) for line in left) == 8, printed
    assert len(list((tmp_path / "jobs").glob("*/*_log.err"))) == 2  # one log folder each


@pytest.fixture
def stand_in_slurm(tmp_path) -> Path:
    """A directory with `srun` and an `sbatch` that keeps the script it is given and answers
    like Slurm; put first on PATH. Returns where the script is kept."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    kept = tmp_path / "sbatch-script.sh"
    answer = "Submitted batch job 4242"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {kept}\necho "{answer}"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    return kept


def test_workers_on_slurm_are_one_job_array_with_a_gpu_each(stand_in_slurm, tmp_path):
    url = "postgresql://tale:s3cret@db-host:5432/tale"
    path = f"{stand_in_slurm.parent / 'slurm-bin'}:{cli_env()['PATH']}"
    proc = run_cli(
        "workers", "count=8", "study=mmlu-llama31", "slurm.partition=gpu", "slurm.account=lab",
        "timeout_min=600", "slurm.setup=[module load cuda]",
        "+slurm.additional_parameters.mail-type=END",
        env={"PATH": path, "TALE_OPT_STORAGE_URL": url},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted 8 worker(s) of study mmlu-llama31 as Slurm job array 4242" in proc.stdout
    assert "squeue -j 4242" in proc.stdout and "scancel 4242" in proc.stdout
    script = stand_in_slurm.read_text()
    for line in (
        "#SBATCH --array=0-7%8", "#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu",
        "#SBATCH --account=lab", "#SBATCH --time=600", "#SBATCH --mail-type=END",
        "#SBATCH --job-name=tale_opt-worker", "module load cuda",
    ):  # fmt: skip
        assert line in script.splitlines(), script
    # Each task's pickled job: the worker of that study; the password stays in the environment.
    pickles = sorted((tmp_path / "outputs" / "workers").glob("4242_*/*_submitted.pkl"))
    assert len(pickles) == 8
    assert b"s3cret" not in pickles[0].read_bytes()
    storage, study = pickle.loads(pickles[0].read_bytes()).args[:2]
    assert (storage["kind"], storage["url"], study) == ("postgres", None, "mmlu-llama31")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["launcher=slurmm", "study=x"], "Did you mean 'slurm'?"),
        (["storage=sqlite", "study=x"], "use storage=postgres"),
        (["storage=postgres", "storage.url=postgresql://u@h/db"], "study=NAME"),
        (["storage=postgres", "storage.url=postgresql://u@h/db", "study=x"], "needs Slurm"),
        (["launcher=local", "storage=sqlite", "study=x", "count=0"], "count must be"),
        (["storage=sqlite", "study=x", "slurm.partiton=gpu"], "slurm.partition"),
    ],
)
def test_bad_workers_command_is_one_line_exit_2(args, fragment):
    # No Slurm on this PATH: the check for it comes last.
    assert_usage_error(run_cli("workers", *args, env={"PATH": "/usr/bin:/bin"}), fragment)


def test_the_shipped_workers_config_composes_and_validates_for_both_launchers(
    monkeypatch, tmp_path
):
    from omegaconf import OmegaConf

    from tale_opt.commands.config import ConfigSource, compose
    from tale_opt.pipeline.worker_array import WorkerArray

    monkeypatch.setenv("TALE_OPT_STORAGE_URL", "postgresql://u@127.0.0.1:5432/db")
    source = ConfigSource(config_name="workers")
    slurm = WorkerArray.from_mapping(
        OmegaConf.to_container(compose(["study=s", "count=4"], source), resolve=True)
    )
    assert (slurm.launcher, slurm.count, slurm.storage.kind, slurm.gpus_per_worker) == (
        "slurm", 4, "postgres", 1,
    )  # fmt: skip
    assert slurm.slurm["cpus_per_task"] == 8 and Path(slurm.folder).is_absolute()
    local = WorkerArray.from_mapping(
        OmegaConf.to_container(
            compose(
                [
                    "launcher=local",
                    "storage=sqlite",
                    f"storage.path={tmp_path / 't.db'}",
                    "study=s",
                ],
                source,
            ),  # fmt: skip
            resolve=True,
        )
    )
    assert (local.launcher, local.storage.kind) == ("local", "sqlite")


def test_coordinator_evaluates_must_be_true_or_false():
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose
    from tale_opt.errors import UsageError
    from tale_opt.pipeline.plan import check_config

    cfg = OmegaConf.to_container(compose(["coordinator_evaluates=maybe"]), resolve=True)
    with pytest.raises(UsageError, match="coordinator_evaluates must be true or false"):
        check_config(cfg)
