"""Distributed search from the command line: real processes, a tiny random model, real data.

The fake-evaluator tests (test_coordination.py) pin the mechanics on every storage; these pin
what a user sees: `workers=N`, `python -m tale_opt worker` joining, resuming with the same
command, refusing a mismatched study, a clear error for an unreachable database, and sweeps.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tale_opt.coordination import study as st
from tests.test_cli import MLFLOW_URI, ROOT, assert_usage_error, run_cli

pytestmark = pytest.mark.slow


def search_args(model_dir: Path, storage: Path | str, run_dir: Path, *extra: str) -> list[str]:
    """A 4-layer search of 8 candidates; `storage` is a SQLite path or storage=... args.

    Latency is not measured: AE-HM would then use measured (noisy) speed-ups, and these tests
    compare picks across runs.
    """
    where = [f"storage.path={storage}"] if isinstance(storage, Path) else storage.split()
    return [
        f"model.path={model_dir}", "model.name=tiny", "n_opt=6", "n_eval=5",
        "searcher.max_drop=2", "eval.batch_size=4", "latency=null", *where,
        f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip


def outcome(run_dir: Path) -> dict:
    """What must not depend on how the search ran: picks, scores, trajectory, candidates."""
    summary = json.loads((run_dir / "summary.json").read_text())

    def pick(entry: dict) -> list:
        return [entry["drop_layers"], entry["score"], entry.get("heldout", {}).get("accuracy")]

    rows = list(csv.DictReader((run_dir / "candidate_results.csv").open()))
    return {
        "picks": {name: pick(summary[name]) for name in ("baseline", "best", "bsba", "ae_hm")},
        "trajectory": [pick(entry) for entry in summary["trajectory"]],
        "stop_reason": summary["stop_reason"],
        "threshold": summary["threshold"],
        "candidates": sorted((row["drop_key"], row["score"]) for row in rows),
    }


def study_trials(storage: Path, name: str) -> list:
    url = f"sqlite:///{storage}"
    return optuna.load_study(study_name=name, storage=url).get_trials()


def candidate_keys(trials: list) -> list[str]:
    done = [t for t in trials if st.RESULT in t.user_attrs]
    return sorted(st.candidate_of(t).drop.key for t in done)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> dict:
    """An uninterrupted in-process search (workers=0) and where it stored its trials."""
    tmp = tmp_path_factory.mktemp("reference")
    run_dir = tmp / "run"
    proc = run_cli(*search_args(tiny_model_dir, tmp / "trials.db", run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"outcome": outcome(run_dir), "storage": tmp / "trials.db", "study": summary["study"]}


def test_spawned_workers_and_a_joining_worker_give_the_in_process_result(
    tiny_model_dir, tmp_path, reference
):
    storage, name = tmp_path / "trials.db", "joined-search"
    # The worker starts first and waits for the coordinator to create the storage and study.
    joiner = subprocess.Popen(
        [sys.executable, "-m", "tale_opt", "worker", "storage=sqlite",
         f"storage.path={storage}", f"study={name}", "idle_timeout=1800"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    proc = run_cli(*search_args(tiny_model_dir, storage, run_dir, "workers=2", f"study={name}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, joiner_log = joiner.communicate(timeout=1800)  # it leaves once the study is finished
    assert joiner.returncode == 0, joiner_log[-3000:]
    assert "joined study joined-search" in joiner_log and "leaves" in joiner_log
    assert outcome(run_dir) == reference["outcome"]
    keys = candidate_keys(study_trials(storage, name))
    assert len(keys) == len(set(keys)) == 8, "every candidate evaluated exactly once"
    # The coordinator printed how to join (Hydra logs to stdout).
    assert f"python -m tale_opt worker storage=sqlite storage.path={storage} study={name}" in (
        proc.stdout + proc.stderr
    )


def test_the_same_command_resumes_and_a_raised_cap_reuses_every_evaluation(
    tiny_model_dir, tmp_path, reference
):
    storage = tmp_path / "trials.db"
    first = run_cli(*search_args(tiny_model_dir, storage, tmp_path / "a", "searcher.max_drop=1"))
    assert first.returncode == 0, first.stderr[-3000:]
    # max_drop only changes when the search stops, so the same study continues.
    second = run_cli(*search_args(tiny_model_dir, storage, tmp_path / "b"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "5 evaluated already" in second.stdout
    assert outcome(tmp_path / "b") == reference["outcome"]
    again = run_cli(*search_args(tiny_model_dir, storage, tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 evaluated already" in again.stdout
    assert outcome(tmp_path / "b") == reference["outcome"]  # no duplicated csv rows
    name = json.loads((tmp_path / "b" / "summary.json").read_text())["study"]["name"]
    keys = candidate_keys(study_trials(storage, name))
    assert len(keys) == len(set(keys)) == 8, "nothing was evaluated twice"


def test_a_study_of_another_search_is_refused(tiny_model_dir, tmp_path, reference):
    name = reference["study"]["name"]
    proc = run_cli(
        *search_args(tiny_model_dir, reference["storage"], tmp_path / "r", f"study={name}"),
        "n_opt=5",
    )
    assert_usage_error(proc, f"study '{name}' belongs to a different search", "splits")
    assert not (tmp_path / "r" / "summary.json").exists()


def test_unreachable_postgres_is_one_line_and_quick(tiny_model_dir, tmp_path):
    started = time.monotonic()
    where = "storage=postgres storage.url=postgresql://postgres@127.0.0.1:1/test"
    proc = run_cli(*search_args(tiny_model_dir, where, tmp_path / "r"))
    assert_usage_error(proc, "cannot reach the postgres storage", "127.0.0.1:1")
    # Refused at once; the bound (interpreter and data loading included) is only against
    # retry loops, generous for a loaded machine.
    assert time.monotonic() - started < 300


def test_search_on_postgres_with_the_url_from_the_environment(
    tiny_model_dir, tmp_path, reference, postgres_url
):
    name = f"cli-{os.getpid()}-{time.time_ns()}"
    env = {"TALE_OPT_STORAGE_URL": postgres_url}
    args = search_args(tiny_model_dir, "storage=postgres", tmp_path / "r")
    try:
        proc = run_cli(*args, f"study={name}", "workers=1", env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert outcome(tmp_path / "r") == reference["outcome"]
    finally:
        url = postgres_url.replace("://", "+psycopg2://", 1)
        optuna.delete_study(study_name=name, storage=url)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["storage=sqlite"], "study=NAME"),
        (["storage=postgre", "study=x"], "Did you mean 'postgres'?"),
        (
            ["storage=sqlite", "storage.path=/nonexistent/t.db", "study=x", "idle_timeout=1"],
            "no sqlite storage at /nonexistent/t.db",
        ),
    ],
)
def test_bad_worker_command_is_one_line_exit_2(args, fragment):
    assert_usage_error(run_cli("worker", *args), fragment)


def test_a_sweep_gives_each_job_its_directory_and_shares_studies_only_across_epsilon(
    tiny_model_dir, tmp_path
):
    sweep = tmp_path / "multirun"
    proc = run_cli(
        "-m", f"model.path={tiny_model_dir}", "n_opt=4,6", "n_eval=4", "searcher.max_drop=1",
        "searcher.epsilon=0.08,1.0", f"storage.path={tmp_path / 't.db'}",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 4
    studies = {(s["n_opt"], s["epsilon"]): s["study"]["name"] for s in summaries}
    assert studies[(4, 0.08)] == studies[(4, 1.0)] != studies[(6, 0.08)] == studies[(6, 1.0)]


def test_sigkill_of_the_coordinator_then_the_same_command_finishes_the_same_search(
    tiny_model_dir, tmp_path
):
    """Kill -9 the CLI mid-search; rerunning the command resumes and changes nothing."""
    # 300 examples make a candidate slow enough (~0.1-0.5 s) to be killed between two.
    slow = ("n_opt=300", "storage.heartbeat_interval=1", "storage.grace_period=3")
    uninterrupted = tmp_path / "uninterrupted"
    proc = run_cli(*search_args(tiny_model_dir, tmp_path / "u.db", uninterrupted, *slow))
    assert proc.returncode == 0, proc.stderr[-3000:]

    storage, run_dir = tmp_path / "k.db", tmp_path / "killed"
    # The test's MLflow store, not the default `mlflow.db` in the launch directory (the repo).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": MLFLOW_URI}  # fmt: skip
    victim = subprocess.Popen(
        [sys.executable, "-m", "tale_opt", *search_args(tiny_model_dir, storage, run_dir, *slow)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    csv_path = run_dir / "candidate_results.csv"
    deadline = time.monotonic() + 3600  # only against a hang
    while time.monotonic() < deadline and victim.poll() is None:
        if csv_path.exists() and len(csv_path.read_text().splitlines()) >= 1 + 3:
            break
        time.sleep(0.02)
    victim.kill()
    victim.wait(timeout=600)
    done = len(csv_path.read_text().splitlines()) - 1
    assert 3 <= done < 8, f"the kill should land mid-search, but {done} of 8 were done"
    assert not (run_dir / "summary.json").exists()

    again = run_cli(*search_args(tiny_model_dir, storage, run_dir, *slow))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{done} evaluated already" in again.stdout + again.stderr
    assert outcome(run_dir) == outcome(uninterrupted)
    name = json.loads((run_dir / "summary.json").read_text())["study"]["name"]
    keys = candidate_keys(study_trials(storage, name))
    assert len(keys) == len(set(keys)) == 8, "no candidate was counted twice"
