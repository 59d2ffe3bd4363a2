"""`python -m tale_opt export` from a finished run: which pick it writes, and what it refuses
before loading anything (run in-process: the refusals come before the model loads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tale_opt.commands.export import main as export_main
from tale_opt.commands.runs import FinishedRun
from tale_opt.errors import UsageError


def finished_run(tmp_path: Path, searcher: str, picks: dict[str, list[int]]) -> Path:
    """A run directory with the summary.json a finished search of `searcher` writes (the
    fields export reads)."""
    run_dir = tmp_path / f"run_{searcher}"
    run_dir.mkdir()
    summary = {
        "searcher": searcher,
        "model_path": str(tmp_path / "model"),
        **{pick: {"drop_layers": layers} for pick, layers in picks.items()},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def export_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export_main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


# SLEB's Best is the full model: removing a layer never lowered its perplexity.
SLEB = {"baseline": [], "best": [], "bsba": [], "ae_hm": [], "final": [3, 7]}


def test_a_pick_that_is_the_full_model_is_refused_with_the_picks_that_prune(tmp_path, capsys):
    run_dir = finished_run(tmp_path, "sleb", SLEB)
    out = tmp_path / "pruned"
    error = export_error([str(run_dir), "--out", str(out)], capsys)  # --pick best: the default
    assert "the best pick of" in error and "is the unpruned baseline" in error
    assert "sleb" in error and "--pick final (layers 3,7)" in error
    assert "--pick baseline for the full model" in error
    assert not out.exists()


def test_pruned_drop_returns_pruning_picks_and_the_baseline_on_purpose(tmp_path):
    run = FinishedRun.open(finished_run(tmp_path, "sleb", SLEB))
    assert run.pruned_drop("final").key == "3,7"
    assert run.pruned_drop("baseline").key == ""  # asked for by name: the full model
    with pytest.raises(UsageError, match="pick=final \\(layers 3,7\\)"):
        run.pruned_drop("ae_hm", flag="pick=")


def test_a_search_that_accepted_nothing_says_no_pick_prunes(tmp_path, capsys):
    nothing = {pick: [] for pick in ("baseline", "best", "bsba", "ae_hm", "final")}
    run_dir = finished_run(tmp_path, "tale", nothing)
    error = export_error([str(run_dir), "--pick", "final", "--out", str(tmp_path / "o")], capsys)
    assert "no pick of this search drops a layer" in error
    assert "--pick baseline writes the full model" in error


def test_an_existing_output_is_refused_before_loading_naming_the_flag(tmp_path, capsys):
    run_dir = finished_run(tmp_path, "tale", {**SLEB, "best": [3]})
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    # The model path does not exist: the refusal comes before anything loads.
    error = export_error([str(run_dir), "--out", str(out)], capsys)
    assert "already exists and is not empty" in error and "pass --overwrite" in error
    assert "overwrite=True" not in error
    assert (out / "keep.txt").read_text() == "user data"


def test_finetune_refuses_a_pick_that_is_the_full_model_like_export(tmp_path):
    from tale_opt.commands.finetune import build_job

    run_dir = finished_run(tmp_path, "sleb", SLEB)
    hydra = run_dir / ".hydra"
    hydra.mkdir()
    (hydra / "config.yaml").write_text(
        "model: {path: " + str(tmp_path / "model") + "}\n"
        "task: {name: arc_easy}\neval: {scoring: loglik}\nseed: 0\nn_opt: 8\nn_eval: 8\n"
    )
    with pytest.raises(UsageError) as refused:
        build_job([f"run={run_dir}", "pick=best"])
    message = str(refused.value)
    assert "is the unpruned baseline" in message and "pick=final (layers 3,7)" in message
    assert "pick=baseline for the full model" in message
    # Asked for by name, the full model is fine-tuned (the paper's "fine-tune, no pruning").
    assert build_job([f"run={run_dir}", "pick=baseline"]).drop.key == ""
    assert build_job([f"run={run_dir}", "pick=final"]).drop.key == "3,7"
