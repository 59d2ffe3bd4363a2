"""The selection criteria from the command line, on a tiny model: probes reach the evaluator
through the study config (in-process and in a spawned worker), and every searcher's summary
ends with a Final configuration of exactly n_drop layers scored on the held-out split."""

from __future__ import annotations

import csv
import json

import pytest

from tests.test_cli import MLFLOW_URI, assert_usage_error, run_cli

pytestmark = pytest.mark.slow


def run_search(tiny_model_dir, tmp_path, *args: str) -> tuple[dict, str]:
    """The summary of a search and what it printed (stdout and stderr)."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        f"model.path={tiny_model_dir}", "model.name=tiny-llama", "n_opt=4", "n_eval=4",
        "eval.batch_size=4", "latency=null", "tracking=none", f"hydra.run.dir={run_dir}",
        f"storage.path={tmp_path / 'trials.db'}", *args,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text()), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("searcher", "probe"),
    [("cosine", "block_influence"), ("angular", "angular_distance"), ("random", "task_accuracy")],
)
def test_one_shot_searchers_end_with_n_drop_layers(tiny_model_dir, tmp_path, searcher, probe):
    summary, printed = run_search(
        tiny_model_dir, tmp_path, f"searcher={searcher}", "n_drop=2",
        *(["searcher.text.source=task"] if searcher != "random" else []),
    )  # fmt: skip
    assert summary["searcher"] == searcher and summary["probe"] == probe
    assert summary["score_probe"] == "task_accuracy"  # ranked by the probe, scored by accuracy
    table = (tmp_path / "run" / "summary.md").read_text()
    assert "| opt acc % [95% CI] |" in table
    # n_drop has no threshold: the head says nothing about one (it said "threshold -%").
    assert summary["threshold"] is None and "threshold" not in table.splitlines()[1]
    # The console: a line per round (the probe and the baseline are round 0), no
    # per-candidate lines, and a probe is not "score 0.0000".
    zero = "round 0: 2 candidates in" if probe != "task_accuracy" else "round 0: 1 candidate in"
    assert zero in printed and "round 2: 1 candidate in" in printed
    assert "score 0.0000" not in printed and "(trial " not in printed
    assert [len(step["drop_layers"]) for step in summary["trajectory"]] == [0, 1, 2]
    assert summary["stop_reason"] == "n_drop_reached"
    assert len(summary["final"]["drop_layers"]) == 2
    assert summary["final"]["heldout"]["n_examples"] == 4


def test_sleb_in_a_spawned_worker_reads_its_calibration_text(tiny_model_dir, tmp_path):
    summary, printed = run_search(
        tiny_model_dir, tmp_path, "searcher=sleb", "n_drop=1", "searcher.text.limit=4",
        "workers=1",
    )  # fmt: skip
    assert summary["probe"] == "perplexity"
    (step0, step1) = summary["trajectory"]
    assert step0["drop_layers"] == [] and step1["drop_layers"][0] in (1, 2)  # ends protected
    assert step0["score"] < 0  # -perplexity
    assert summary["score_probe"] == "perplexity"
    table = (tmp_path / "run" / "summary.md").read_text()
    assert "| opt perplexity |" in table and f"| {-step0['score']:.2f} |" in table
    # The baseline is a perplexity on the calibration text, and says so (not "on N
    # optimization examples"), in the table and in the log.
    head = table.splitlines()[1]
    ppl = f"perplexity {-step0['score']:.2f}"
    assert head.startswith(f"baseline {ppl} on the probe text (lambada, 4 documents)")
    assert "optimization examples" not in head and "threshold" not in head
    assert f"baseline: {ppl} on the probe text (lambada, 4 documents), not on the task" in (
        printed
    )
    assert summary["final"]["drop_layers"] == step1["drop_layers"]


def test_one_shot_searcher_without_n_drop_is_a_usage_error(tiny_model_dir, tmp_path):
    proc = run_cli(f"model.path={tiny_model_dir}", "searcher=cosine", "tracking=none",
                   f"hydra.run.dir={tmp_path / 'r'}")  # fmt: skip
    assert_usage_error(proc, "searcher 'cosine' needs the number of layers to drop", "n_drop=")


def test_a_probe_of_the_full_model_and_its_accuracy_are_separate_records(tiny_model_dir, tmp_path):
    """Block Influence and the baseline accuracy both score the empty drop set: each keeps its
    own CSV row, MLflow child run and (for accuracy) the baseline predictions."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        f"model.path={tiny_model_dir}", "n_opt=4", "n_eval=4", "eval.batch_size=4",
        "latency=null", "searcher=cosine", "n_drop=2", "searcher.text.source=task",
        f"hydra.run.dir={run_dir}", f"storage.path={tmp_path / 'trials.db'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((run_dir / "candidate_results.csv").open()))
    assert sorted((r["probe"], r["drop_key"]) for r in rows if r["drop_key"] == "") == [
        ("block_influence", ""),
        ("task_accuracy", ""),
    ]
    assert len(rows) == 4  # the probe, the baseline, drop sets of 1 and 2 layers
    baseline = (run_dir / "predictions" / "optimization_baseline.jsonl").read_text()
    assert len(baseline.splitlines()) == 4
    from tale_opt.tracking.query import child_runs

    summary = json.loads((run_dir / "summary.json").read_text())
    children = child_runs(MLFLOW_URI, summary["tracking"]["parent_run_id"])
    probes = sorted((c.tags["tale_opt.probe"], c.tags["tale_opt.drop_key"]) for c in children)
    assert probes == sorted((r["probe"], r["drop_key"]) for r in rows)
