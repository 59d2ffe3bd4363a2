"""Multi-task search (`tasks=[A,B]`): each task on its own splits, the candidate's score the
mean (or minimum) of its per-task accuracies, per-task records everywhere a candidate is
recorded, and per-task held-out results with paired tests in the summary.

The equality tests compose real configs with Hydra and score every one-layer drop set of a
tiny model with the multi-task evaluator and with one single-task evaluator per task, each
loaded from its own config: the per-task accuracies must be the single-task scores and the
score their aggregate. One real command-line search checks the records.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from tale_opt.commands.config import ConfigSource, compose, repository
from tale_opt.commands.tasks import check_tasks_overrides, expand_tasks
from tale_opt.coordination import study as st
from tale_opt.errors import UsageError
from tale_opt.outcomes import decode_outcomes
from tale_opt.pipeline.candidates import CandidateEvaluator
from tale_opt.pipeline.multitask import evaluator_for, task_metric
from tale_opt.pipeline.outputs import OPT
from tale_opt.pipeline.plan import plan_search
from tale_opt.types import Candidate, DropSet
from tests.test_cli import assert_usage_error, run_cli

TASKS = ("arc_easy_cloze", "boolq")


@pytest.fixture(scope="module")
def model_dir(wide_tiny_model_dir) -> Path:
    return wide_tiny_model_dir


def search_config(model_dir: Path, tmp_path: Path, *overrides: str) -> dict:
    """A resolved search config as the CLI builds it (a multi-task one with `tasks=[...]`)."""
    args = [
        f"model.path={model_dir}", "model.name=tiny", "n_opt=8", "n_eval=12", "n_drop=1",
        "eval.batch_size=4", "latency=null", "tracking=none",
        f"storage.path={tmp_path / 'trials.db'}", *overrides,
    ]  # fmt: skip
    cfg = OmegaConf.to_container(compose(args), resolve=True)
    with repository(ConfigSource()):
        return expand_tasks(cfg, args, [], "config")


def candidates(num_layers: int = 4) -> list[Candidate]:
    return [Candidate(DropSet()), *(Candidate(DropSet.of([i])) for i in range(num_layers))]


@pytest.mark.parametrize("how", ["mean", "min"])
def test_multitask_score_is_the_aggregate_of_single_task_scores(model_dir, tmp_path, how):
    multi = plan_search(
        search_config(
            model_dir, tmp_path, f"tasks=[{','.join(TASKS)}]", f"multitask.aggregate={how}"
        )  # fmt: skip
    )
    # The study's config as a worker reads it back (JSON), fingerprint-checked like a worker.
    stored = json.loads(json.dumps(multi.config))
    evaluate = evaluator_for(stored, expected=json.loads(json.dumps(multi.fingerprint)))
    singles = {}
    for name in TASKS:
        plan = plan_search(search_config(model_dir, tmp_path, f"task={name}"))
        singles[name] = CandidateEvaluator(plan.config, task=plan.task, splits=plan.splits)
        # Each task keeps the splits a single-task search of it draws.
        [part] = [t for t in multi.suite if t.name == name]
        assert part.splits.fingerprint == plan.splits.fingerprint
    assert multi.suite[0].config["eval"]["scoring"] == "loglik"  # each task's own scoring
    assert multi.suite[1].config["eval"]["scoring"] == "letters"
    scores = set()
    for candidate in candidates():
        obs = evaluate(candidate)
        single = {name: singles[name](candidate) for name in TASKS}
        per_task = [single[name].score for name in TASKS]
        expected = sum(per_task) / len(per_task) if how == "mean" else min(per_task)
        assert obs.score == pytest.approx(expected, abs=1e-12)
        assert obs.metrics["accuracy"] == obs.score
        for name in TASKS:
            for key in ("accuracy", "n_correct", "n_examples", "accuracy_ci_low"):
                assert obs.metrics[task_metric(name, key)] == single[name].metrics[key]
        # The outcomes behind the paired round tests: the tasks' outcomes one after another.
        joined = [v for n in TASKS for v in decode_outcomes(single[n].extras["correct"]).values()]
        assert list(decode_outcomes(obs.extras["correct"]).values()) == joined
        assert len(joined) == 16  # every example of both tasks (n_opt=8 each)
        scores.add(round(obs.score, 9))
    assert len(scores) > 1  # the drop sets differ, so the equality is not about constants


def test_the_fingerprint_holds_every_task_and_the_aggregate(model_dir, tmp_path):
    base = plan_search(search_config(model_dir, tmp_path, "tasks=[arc_easy_cloze,boolq]"))
    assert [t["task"] for t in base.fingerprint["tasks"]] == list(TASKS)
    assert base.fingerprint["aggregate"] == "mean"
    assert base.study_name.startswith("arc_easy_cloze_boolq-tiny-tale-s0-")
    other = plan_search(search_config(model_dir, tmp_path, "tasks=[arc_easy_cloze,winogrande]"))
    fewer = plan_search(search_config(model_dir, tmp_path, "tasks=[arc_easy_cloze,boolq]",
                                      "multitask.aggregate=min"))  # fmt: skip
    shots = plan_search(search_config(model_dir, tmp_path, "tasks=[arc_easy_cloze,boolq]",
                                      "task.fewshot.k=1"))  # fmt: skip
    names = {base.study_name, other.study_name, fewer.study_name, shots.study_name}
    assert len(names) == 4
    # `task.fewshot.k` applies to every task of the list.
    assert [t.task.fewshot.k for t in shots.suite] == [1, 1]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["task=boolq", "tasks=[arc_easy_cloze,boolq]"], "not both"),
        (["tasks=[boolq]"], "at least two"),
        (["tasks=[boolq,boolq]"], "listed twice"),
        (["tasks=[arc_easy_cloze,boolk]"], "Did you mean 'boolq'?"),
        (["tasks=arc_easy_cloze,boolq"], "a list in brackets"),
    ],
)
def test_bad_task_lists_are_refused_before_any_job(overrides, fragment):
    with pytest.raises(UsageError, match=fragment.replace("?", r"\?")):
        check_tasks_overrides(overrides, ConfigSource())


def test_bad_multitask_settings_are_refused(model_dir, tmp_path):
    with pytest.raises(UsageError, match="multitask.aggregate must be one of mean, min"):
        plan_search(search_config(model_dir, tmp_path, "tasks=[arc_easy_cloze,boolq]",
                                  "multitask.aggregate=median"))  # fmt: skip
    with pytest.raises(UsageError, match="ranks layers by perplexity"):
        plan_search(search_config(model_dir, tmp_path, "tasks=[arc_easy_cloze,boolq]",
                                  "searcher=sleb"))  # fmt: skip
    names_only = {**search_config(model_dir, tmp_path), "tasks": list(TASKS)}
    with pytest.raises(UsageError, match="holds task names, not composed task configs"):
        plan_search(names_only)


@pytest.mark.parametrize("pruner", ["paired", "successive_halving", "hyperband"])
def test_a_racing_pruner_is_refused_for_a_multitask_search(model_dir, tmp_path, pruner):
    # The same pruner plans fine for one task: the refusal is about the aggregate score.
    single = plan_search(search_config(model_dir, tmp_path, "task=boolq", f"pruner={pruner}"))
    assert single.pruner.name == pruner
    with pytest.raises(UsageError, match=f"pruner={pruner} .*multi-task.*use pruner=none"):
        plan_search(search_config(model_dir, tmp_path, "tasks=[arc_easy_cloze,boolq]",
                                  f"pruner={pruner}"))  # fmt: skip


@pytest.mark.parametrize("pruner", ["exact", "none"])
def test_a_multitask_search_scores_every_candidate_in_full(model_dir, tmp_path, caplog, pruner):
    """The default pruner (exact) bounds one task's count, which an aggregate is not: a
    multi-task search runs as pruner=none, enqueues no trial prunable and says so once."""
    import logging

    from tale_opt.pipeline.run import run

    cfg = search_config(model_dir, tmp_path, "tasks=[arc_easy_cloze,boolq]", f"pruner={pruner}")
    # One task keeps the default exact pruner with these settings.
    assert plan_search(search_config(model_dir, tmp_path, "task=boolq")).pruner.name == "exact"
    with caplog.at_level(logging.INFO, logger="tale_opt"):
        summary = run(cfg, tmp_path / "run")
    said = [r for r in caplog.records if "every candidate is scored in full" in r.getMessage()]
    assert len(said) == (1 if pruner == "exact" else 0)
    [name] = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'trials.db'}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'trials.db'}")
    trials = [t for t in study.get_trials() if st.candidate_of(t) is not None]
    assert len(trials) == 5  # the full model and every one-layer drop set
    for trial in trials:
        assert trial.state.name == "COMPLETE" and not st.is_prunable(trial)
        result = trial.user_attrs[st.RESULT]["metrics"]
        for task in TASKS:  # every example of every task was scored
            assert result[task_metric(task, "n_examples")] == 8
    assert summary["timings"]["pruner"] == "none"
    assert summary["timings"]["pruned_candidates"] == 0


@pytest.mark.slow
def test_multitask_search_records_per_task_results(model_dir, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli(
        f"model.path={model_dir}", "model.name=tiny", "tasks=[arc_easy_cloze,boolq]",
        "n_opt=8", "n_eval=12", "n_drop=1", "eval.batch_size=8", "latency=null",
        f"tracking.uri={uri}", f"storage.path={tmp_path / 'trials.db'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = list((tmp_path / "outputs").glob("*/*_arc_easy_cloze+boolq"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "arc_easy_cloze+boolq" and summary["aggregate"] == "mean"
    assert set(summary["tasks"]) == set(TASKS)
    # Every candidate (all five: early termination is off) with its per-task accuracies.
    with (run / "candidate_results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["drop_key"] for r in rows} == {"", "0", "1", "2", "3"}
    for row in rows:
        assert row["status"] == "complete"
        per_task = [float(row[task_metric(n, "accuracy")]) for n in TASKS]
        assert float(row["score"]) == pytest.approx(sum(per_task) / 2)
        assert float(row[task_metric("boolq", "n_examples")]) == 8
    # The same in the study's trials and the MLflow child runs.
    storage = f"sqlite:///{tmp_path / 'trials.db'}"
    [name] = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t["task"] for t in study.user_attrs[st.FINGERPRINT]["tasks"]] == list(TASKS)
    trials = [t for t in study.get_trials() if st.candidate_of(t) is not None]
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    for trial in trials:
        metrics = trial.user_attrs[st.RESULT]["metrics"]
        assert {task_metric(n, "accuracy") for n in TASKS} <= set(metrics)
    client = MlflowClient(uri)
    children = [
        r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
        if "mlflow.parentRunId" in r.data.tags
    ]  # fmt: skip
    assert len(children) == 5
    for child in children:  # metric names say the split: the search's are under `opt.`
        assert {f"{OPT}.{task_metric(n, 'accuracy')}" for n in TASKS} <= set(child.data.metrics)
    # Held-out: per task and pick, an interval, and the paired test against Baseline.
    for pick in ("baseline", "best", "final"):
        tasks = summary[pick]["heldout"]["tasks"]
        accuracies = [tasks[n]["accuracy"] for n in TASKS]
        assert summary[pick]["heldout"]["accuracy"] == pytest.approx(sum(accuracies) / 2)
        for name in TASKS:
            assert tasks[name]["n_examples"] == 12
            assert tasks[name]["accuracy_ci_low"] <= tasks[name]["accuracy"]
            assert ("vs_baseline" in tasks[name]) == (pick != "baseline")
    for name in TASKS:  # one file per distinct configuration: the first pick that has it
        assert (run / "predictions" / name / "heldout_baseline.jsonl").is_file()
        assert (run / "predictions" / name / "heldout_best.jsonl").is_file()
    table = (run / "summary.md").read_text()
    assert "| boolq | Final |" in table and "| arc_easy_cloze | Baseline |" in table
    assert "every candidate is scored in full" in proc.stdout + proc.stderr
    # Commands that read the one task a search ran on refuse it, naming the way out.
    from tale_opt.commands import analyze, evaluate

    for build in (evaluate.build_plan, analyze.build_plan):
        with pytest.raises(UsageError, match="is a multi-task search .* drop=\\[...\\]"):
            build([f"run={run}"])


@pytest.mark.slow
def test_task_and_tasks_together_is_one_line_error(tmp_path):
    proc = run_cli("task=boolq", "tasks=[arc_easy_cloze,boolq]", cwd=tmp_path)
    assert_usage_error(proc, "not both")
