"""What real searches record in MLflow, read back through the MLflow API: metric names by
split with the right values, child runs with the parent's tags, unique names and a task
accuracy for every searcher, probe internals as an artifact, and a second search on a shared
study that links to the configurations already logged instead of logging them again.

The searches run in this process on a tiny random-init Llama (seconds each), into a SQLite
MLflow store and an Optuna SQLite storage under the module's temporary directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tale_opt.types import DropSet

EXPERIMENT = "tale_opt"


def _search(model_dir: Path, root: Path, name: str, *overrides: str) -> dict[str, Any]:
    """Run one search in this process; returns its summary.json content."""
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose
    from tale_opt.commands.search import register_resolvers
    from tale_opt.pipeline import run

    register_resolvers()
    cfg = compose(
        [
            f"model.path={model_dir}", "model.name=tiny-llama", "n_opt=6", "n_eval=5",
            "eval.batch_size=4", "latency=null", f"storage.path={root / 'trials.db'}",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *overrides,
        ]
    )  # fmt: skip
    config = OmegaConf.to_container(cfg, resolve=True)
    run.run(config, root / name, launch_dir=root)
    return json.loads((root / name / "summary.json").read_text())


@pytest.fixture(scope="module")
def searches(tiny_model_dir, tmp_path_factory) -> dict[str, Any]:
    """Four searches into one MLflow store: TALE, TALE again on the same study with another
    epsilon, SLEB (perplexity probe) and cosine (Block Influence probe)."""
    root = tmp_path_factory.mktemp("searches")
    text = "searcher.text.source=task"
    runs = {
        "tale": ("searcher.max_drop=1",),
        # Same study (epsilon is not part of it): its evaluations are the first search's.
        "tale_again": ("searcher.max_drop=1", "searcher.epsilon=0.5"),
        "sleb": ("searcher=sleb", "n_drop=1", text),
        "cosine": ("searcher=cosine", "n_drop=1", text),
    }
    summaries = {name: _search(tiny_model_dir, root, name, *args) for name, args in runs.items()}
    return {"root": root, "uri": f"sqlite:///{root / 'mlflow.db'}", **summaries}


@pytest.fixture(scope="module")
def client(searches):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=searches["uri"])


def _children(client, parent_run_id: str) -> list[Any]:
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def _child(client, summary: dict[str, Any], drop: list[int]) -> Any:
    """The child run of `drop` in the study of `summary`'s search (whichever search logged
    it), scored by the search's score probe."""
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    probe = summary["score_probe"]
    study = summary["study"]["name"]
    (run,) = client.search_runs(
        [experiment],
        filter_string=f"tags.`tale_opt.study` = '{study}' and "
        f"tags.`tale_opt.candidate` = '{probe}:{DropSet.of(drop).key}'",
    )
    return run


def _expected_tflops(model_dir: Path, root: Path, drop: list[int]) -> tuple[float, float]:
    """TFLOPs per example of scoring the optimization and the held-out split without `drop`,
    computed here from the same config (same seed, so the same splits)."""
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose
    from tale_opt.cost.workload import evaluation_flops
    from tale_opt.pipeline.candidates import CandidateEvaluator
    from tale_opt.pipeline.plan import plan_search

    cfg = compose(
        [
            f"model.path={model_dir}", "model.name=tiny-llama", "n_opt=6", "n_eval=5",
            "eval.batch_size=4", "latency=null", f"storage.path={root / 'trials.db'}",
            "tracking=none", "searcher.max_drop=1",
        ]
    )  # fmt: skip
    plan = plan_search(OmegaConf.to_container(cfg, resolve=True))
    evaluate = CandidateEvaluator(plan.config, task=plan.task, splits=plan.splits)
    evaluator, dropped = evaluate.evaluator, DropSet.of(drop)
    heldout = evaluator.prepare(plan.splits.evaluation, split="held-out")
    held = evaluation_flops(
        evaluate.model.config, dropped, heldout, max_new_tokens=evaluator.max_new_tokens
    )
    return (
        evaluate.tflops(dropped) / len(plan.splits.optimization),
        held.tflops / len(plan.splits.evaluation),
    )


# -- 1. metric names by split -----------------------------------------------------------------
def test_an_accepted_configurations_child_has_both_splits_tflops(searches, client, tiny_model_dir):
    summary = searches["tale"]
    final = summary["final"]["drop_layers"]
    child = _child(client, summary, final)
    metrics = child.data.metrics
    opt, held = _expected_tflops(tiny_model_dir, searches["root"], final)
    assert opt != pytest.approx(held)  # other prompts: a mix-up would show
    assert metrics["opt.tflops_per_example"] == pytest.approx(opt, rel=1e-9)
    assert metrics["heldout.tflops_per_example"] == pytest.approx(held, rel=1e-9)
    assert metrics["opt.tflops"] == pytest.approx(opt * summary["n_opt"], rel=1e-9)
    assert metrics["heldout.tflops"] == pytest.approx(held * summary["n_eval"], rel=1e-9)
    # Accuracy on each split under its own name; no name without its split.
    assert metrics["opt.accuracy"] == summary["final"]["score"]
    assert metrics["heldout.accuracy"] == summary["final"]["heldout"]["accuracy"]
    assert not {"tflops", "accuracy", "score", "accuracy_ci_low"} & set(metrics)
    # The parent and summary.json use the same names.
    parent = client.get_run(summary["tracking"]["parent_run_id"]).data.metrics
    assert parent["final.opt.tflops_per_example"] == pytest.approx(opt, rel=1e-9)
    assert parent["final.heldout.tflops_per_example"] == pytest.approx(held, rel=1e-9)
    assert parent["final.opt.accuracy_ci_low"] == metrics["opt.accuracy_ci_low"]
    assert "final.tflops" not in parent and "baseline_accuracy" not in parent
    assert summary["final"]["opt"]["tflops_per_example"] == pytest.approx(opt, rel=1e-9)
    assert summary["final"]["heldout"]["tflops_per_example"] == pytest.approx(held, rel=1e-9)
    assert "tflops" not in summary["final"]


# -- 2. child runs comparable across criteria -------------------------------------------------
@pytest.fixture
def fluent(searches):
    """MLflow's fluent API pointed at the searches' store (and back afterwards)."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(searches["uri"])
    yield mlflow
    mlflow.set_tracking_uri(before)


def _csv_keys(root: Path, name: str) -> set[str]:
    import csv

    with (root / name / "candidate_results.csv").open(newline="") as handle:
        return {f"{row['probe']}:{row['drop_key']}" for row in csv.DictReader(handle)}


def test_configuration_runs_carry_the_search_tags_and_filter_like_searches(searches, fluent):
    runs = fluent.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string="tags.searcher = 'tale' and tags.`tale_opt.kind` = 'configuration'",
        output_format="list",
    )
    # Every configuration the TALE study evaluated, once (the second search logged none).
    assert {r.data.tags["tale_opt.candidate"] for r in runs} == _csv_keys(searches["root"], "tale")
    assert len(runs) == len(_csv_keys(searches["root"], "tale"))
    parent = fluent.get_run(searches["tale"]["tracking"]["parent_run_id"]).data.tags
    shared = ("model", "task", "searcher", "seed", "epsilon", "n_opt", "max_drop", "scoring")
    assert {k: parent[k] for k in shared} == {
        "model": "tiny-llama", "task": "arc_easy_cloze", "searcher": "tale", "seed": "0",
        "epsilon": "0.08", "n_opt": "6", "max_drop": "1", "scoring": "loglik",
    }  # fmt: skip
    for run in runs:
        assert {k: run.data.tags[k] for k in shared} == {k: parent[k] for k in shared}
    one_layer = fluent.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string="tags.searcher = 'sleb' and tags.`tale_opt.round` = '1'",
        output_format="list",
    )
    assert one_layer and {r.data.tags["n_drop"] for r in one_layer} == {"1"}


def test_configuration_runs_have_unique_readable_names(searches, fluent):
    runs = fluent.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string="tags.`tale_opt.kind` = 'configuration'",
        output_format="list",
    )
    names = [r.info.run_name for r in runs]
    assert len(names) == len(set(names))
    final = searches["tale"]["final"]["drop_layers"]
    assert f"tale drop {DropSet.of(final).key or 'none'} s0" in names
    assert "cosine drop none (block_influence) s0" in names
    searches_named = fluent.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string="tags.`tale_opt.kind` = 'search'",
        output_format="list",
    )
    parents = {r.info.run_name for r in searches_named}
    assert len(parents) == 4  # the two TALE searches on one study differ by epsilon
    assert "tale · tiny-llama · arc_easy_cloze · seed 0 · ε 0.5 · max_drop 1 · n_opt 6 · " in (
        " ".join(parents)
    )


def test_every_searcher_has_a_task_accuracy_where_one_exists(searches, client):
    # SLEB ranks by perplexity on its probe text: no optimization accuracy exists, but the
    # configurations it reports were scored on the held-out split.
    sleb = searches["sleb"]
    final = _child(client, sleb, sleb["final"]["drop_layers"]).data.metrics
    assert final["heldout.accuracy"] == sleb["final"]["heldout"]["accuracy"]
    assert final["probe.perplexity"] == pytest.approx(-sleb["final"]["score"])
    assert "opt.accuracy" not in final
    # Cosine ranks by a Block Influence probe, then scores each drop set's task accuracy.
    cosine = searches["cosine"]
    scored = _child(client, cosine, cosine["final"]["drop_layers"]).data.metrics
    assert scored["opt.accuracy"] == cosine["final"]["score"]
    assert scored["heldout.accuracy"] == cosine["final"]["heldout"]["accuracy"]


def test_probe_internals_are_an_artifact_not_metric_columns(searches, client, tmp_path):
    cosine = searches["cosine"]
    probe = _child(client, {**cosine, "score_probe": "block_influence"}, [])
    assert not [k for k in probe.data.metrics if k.startswith("bi.") or "bi." in k]
    assert probe.data.metrics["probe.n_tokens"] > 0
    path = client.download_artifacts(probe.info.run_id, "probe_values.json", str(tmp_path))
    values = json.loads(Path(path).read_text())
    assert sorted(values) == [f"bi.{layer}" for layer in range(4)]
    assert all(0.0 <= v <= 2.0 for v in values.values())  # 1 - cosine similarity


# -- 5. a second search on a shared study -----------------------------------------------------
def test_a_search_replaying_a_shared_study_links_instead_of_logging_again(searches, client):
    first, again = searches["tale"], searches["tale_again"]
    assert first["study"]["name"] == again["study"]["name"]  # epsilon is no part of the study
    parent = again["tracking"]["parent_run_id"]
    assert parent != first["tracking"]["parent_run_id"]
    # Every evaluation it counted was the first search's: no child of its own, each linked.
    assert _children(client, parent) == []
    replayed = _csv_keys(searches["root"], "tale_again")
    assert replayed and replayed <= _csv_keys(searches["root"], "tale")
    run = client.get_run(parent)
    assert run.data.metrics["linked_configurations"] == len(replayed)
    assert run.data.tags["tale_opt.study"] == first["study"]["name"]
    assert run.info.run_name != client.get_run(first["tracking"]["parent_run_id"]).info.run_name
    assert (
        client.get_run(first["tracking"]["parent_run_id"]).data.metrics["linked_configurations"]
        == 0
    )
    # Its picks' held-out results went into the study's child runs, which hold one
    # evaluation each whatever search asks.
    final = again["final"]
    child = _child(client, again, final["drop_layers"]).data.metrics
    assert child["heldout.accuracy"] == final["heldout"]["accuracy"]
