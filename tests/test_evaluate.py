"""`python -m tale_opt evaluate`: a model, a drop set or a search's picks scored on held-out
splits, and the cross-task transfer matrix of several searches.

Two real tiny searches (one sweep over arc_easy_cloze and boolq) are the runs; evaluating
their picks must give exactly the numbers and per-example outcomes the searches reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tale_opt.commands.evaluate import build_plan, evaluate, main
from tale_opt.errors import UsageError
from tale_opt.finetune.heldout import search_predictions_file
from tests.test_cli import assert_usage_error, run_cli

pytestmark = pytest.mark.slow


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_evaluate(*overrides: str) -> dict:
    """The evaluate command in this process; returns evaluation.json's content."""
    path, _ = evaluate(build_plan(list(overrides)))
    record = json.loads(path.read_text())
    record["dir"] = str(path.parent)
    return record


def rows_of(record: dict, task: str) -> dict[str, dict]:
    [entry] = [e for e in record["tasks"] if e["task"] == task]
    return {row["label"]: row for row in entry["configurations"]}


def predictions_of(record: dict, row: dict) -> list[dict]:
    return read_jsonl(Path(record["dir"]) / row["predictions"])


@pytest.fixture(scope="module")
def model_dir(wide_tiny_model_dir) -> Path:
    return wide_tiny_model_dir


@pytest.fixture(scope="module")
def searches(tmp_path_factory, model_dir) -> dict[str, Path]:
    """task -> run directory of a finished one-layer search (a sweep over two tasks)."""
    root = tmp_path_factory.mktemp("searches")
    proc = run_cli(
        "-m", f"model.path={model_dir}", "model.name=tiny-wide", "task=arc_easy_cloze,boolq",
        "n_opt=8", "n_eval=12", "n_drop=1", "eval.batch_size=8", "latency=null",
        "tracking=none", f"hydra.sweep.dir={root / 'sweep'}",
        f"storage.path={root / 'trials.db'}", cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for summary in (root / "sweep").glob("*/summary.json"):
        runs[json.loads(summary.read_text())["task"]] = summary.parent
    assert set(runs) == {"arc_easy_cloze", "boolq"}
    return runs


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# -- a search's picks, on its own held-out split ----------------------------------------------


def test_evaluate_reproduces_the_searchs_heldout_results(searches):
    run = searches["arc_easy_cloze"]
    summary = summary_of(run)
    record = run_evaluate(f"run={run}", "pick=[best,final]")
    [entry] = record["tasks"]
    assert entry["splits_fingerprint"] == summary["splits_fingerprint"]
    assert entry["n_examples"] == summary["n_eval"] == 12
    assert entry["searched_by"] == [str(run.resolve())]
    rows = rows_of(record, "arc_easy_cloze")
    drops = {"Baseline": "baseline", "Best": "best", "Final": "final"}
    assert set(rows) <= set(drops) and {"Baseline", "Final"} <= set(rows)
    for label, row in rows.items():
        pick = drops[label]
        heldout = summary[pick]["heldout"]
        assert row["drop_layers"] == summary[pick]["drop_layers"]
        assert row["accuracy"] == heldout["accuracy"]
        assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == (
            heldout["accuracy_ci_low"], heldout["accuracy_ci_high"],
        )  # fmt: skip
        assert row.get("vs_baseline") == heldout.get("vs_baseline")
        # Example by example: the same items, in the same order, with the same outcome and
        # (loglik scoring) the same per-choice log-likelihoods.
        theirs = read_jsonl(search_predictions_file(run, summary, pick))
        mine = predictions_of(record, row)
        assert [r["id"] for r in mine] == [r["id"] for r in theirs]
        assert [r["correct"] for r in mine] == [r["correct"] for r in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert len(a["loglik"]) >= 2 and a["loglik"] == pytest.approx(b["loglik"], abs=1e-4)
    final = summary["final"]["drop_layers"]
    assert len(final) == 1 and rows["Final"]["n_layers"] == 3
    assert record["configurations"][-1] == {
        "label": "Final", "drop_layers": final, "run": str(run.resolve()), "pick": "final",
        "source_task": "arc_easy_cloze",
    }  # fmt: skip


def test_pick_baseline_is_the_searchs_baseline_and_a_drop_set_matches_its_pick(
    searches, model_dir
):
    run = searches["boolq"]
    summary = summary_of(run)
    record = run_evaluate(f"run={run}", "pick=baseline")
    rows = rows_of(record, "boolq")
    assert list(rows) == ["Baseline"]  # the pick that drops nothing is the Baseline row
    assert rows["Baseline"]["accuracy"] == summary["baseline"]["heldout"]["accuracy"]
    theirs = read_jsonl(run / "predictions" / "heldout_baseline.jsonl")
    assert predictions_of(record, rows["Baseline"]) == theirs
    # The same layers given as drop= with the search's model, task and split settings.
    final = summary["final"]["drop_layers"]
    record = run_evaluate(
        f"model.path={model_dir}", "task=boolq", "n_opt=8", "n_eval=12", "eval.batch_size=8",
        f"drop=[{','.join(map(str, final))}]",
    )  # fmt: skip
    row = rows_of(record, "boolq")[f"drop {','.join(map(str, final))}"]
    assert row["accuracy"] == summary["final"]["heldout"]["accuracy"]
    assert row["vs_baseline"] == summary["final"]["heldout"]["vs_baseline"]
    assert record["tasks"][0]["searched_by"] == []


def test_an_exported_checkpoint_scores_as_the_model_without_its_layers(model_dir, tmp_path):
    from tale_opt.model.export import export_pruned
    from tale_opt.model.loading import ModelSpec, load_model
    from tale_opt.types import DropSet

    model, tokenizer = load_model(ModelSpec(path=str(model_dir), dtype="float32", device="cpu"))
    pruned = export_pruned(model, tokenizer, DropSet((1,)), tmp_path / "pruned")
    common = ("n_eval=10", "eval.batch_size=8", "baseline=false")
    dropped = run_evaluate(f"model.path={model_dir}", "drop=[1]", *common)
    exported = run_evaluate(f"model.path={pruned}", *common)
    assert exported["num_layers"] == 3 and exported["model"] == str(pruned)
    [row] = exported["tasks"][0]["configurations"]
    assert row["label"] == "Baseline" and row["n_layers"] == 3
    [dropped_row] = dropped["tasks"][0]["configurations"]
    assert dropped_row["label"] == "drop 1" and "vs_baseline" not in dropped_row
    mine, theirs = predictions_of(exported, row), predictions_of(dropped, dropped_row)
    assert [r["correct"] for r in mine] == [r["correct"] for r in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert a["loglik"] == pytest.approx(b["loglik"], abs=1e-3)


# -- cross-task transfer ----------------------------------------------------------------------


def test_transfer_matrix_of_two_searches(searches):
    arc, boolq = searches["arc_easy_cloze"], searches["boolq"]
    # A sweep's job directories hold '=' and ',': quoted, as Hydra lists take them.
    record = run_evaluate(f"runs=['{arc}','{boolq}']")
    assert [e["task"] for e in record["tasks"]] == ["arc_easy_cloze", "boolq"]
    columns = ["arc_easy_cloze Final", "boolq Final"]
    out = Path(record["dir"])
    for task, run in (("arc_easy_cloze", arc), ("boolq", boolq)):
        summary = summary_of(run)
        rows = rows_of(record, task)
        assert list(rows) == ["Baseline", *columns]
        # Each task is scored on its own search's held-out split (its seed and sizes).
        [entry] = [e for e in record["tasks"] if e["task"] == task]
        assert entry["splits_fingerprint"] == summary["splits_fingerprint"]
        baseline_ids = [r["id"] for r in read_jsonl(run / "predictions/heldout_baseline.jsonl")]
        assert [r["id"] for r in predictions_of(record, rows["Baseline"])] == baseline_ids
        own = rows[f"{task} Final"]
        assert own["accuracy"] == summary["final"]["heldout"]["accuracy"]
        assert own["vs_baseline"] == summary["final"]["heldout"]["vs_baseline"]
    # The other search's pick on each task: layers of that search, items of this task.
    other = rows_of(record, "boolq")["arc_easy_cloze Final"]
    assert other["drop_layers"] == summary_of(arc)["final"]["drop_layers"]
    assert other["source_task"] == "arc_easy_cloze"
    outcomes = [r["correct"] for r in predictions_of(record, other)]
    base = [r["correct"] for r in predictions_of(record, rows_of(record, "boolq")["Baseline"])]
    gained = sum(a and not b for a, b in zip(outcomes, base, strict=True))
    lost = sum(b and not a for a, b in zip(outcomes, base, strict=True))
    assert (other["vs_baseline"]["only_pick"], other["vs_baseline"]["only_baseline"]) == (
        gained, lost,
    )  # fmt: skip

    from tale_opt.evaluate.transfer import format_cell, transfer_matrix

    matrix = transfer_matrix(record)
    assert matrix.tasks == ("arc_easy_cloze", "boolq") and matrix.labels == tuple(columns)
    cell = matrix.cell("boolq", "arc_easy_cloze Final")
    assert cell.delta == pytest.approx(
        other["accuracy"] - rows_of(record, "boolq")["Baseline"]["accuracy"]
    )
    assert not cell.own and matrix.cell("boolq", "boolq Final").own
    table = (out / "transfer.md").read_text()
    assert "| task | n | Baseline % [95% CI] | arc_easy_cloze Final | boolq Final |" in table
    boolq_line = next(line for line in table.splitlines() if line.startswith("| boolq |"))
    assert format_cell(cell) in boolq_line and "[own]" in boolq_line
    png = (out / "transfer.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert record["transfer"] == {"markdown": "transfer.md", "heatmap": "transfer.png"}


def test_a_pick_on_a_task_no_search_ran_uses_that_tasks_own_split(searches):
    run = searches["boolq"]
    record = run_evaluate(f"run={run}", "tasks=[boolq,winogrande]", "n_eval=6")
    entries = {e["task"]: e for e in record["tasks"]}
    # n_eval= given on the command line wins for every task; winogrande draws with the run's
    # seed and its own default n_opt.
    assert entries["boolq"]["n_examples"] == entries["winogrande"]["n_examples"] == 6
    assert entries["winogrande"]["searched_by"] == [] and entries["winogrande"]["seed"] == 0
    assert entries["winogrande"]["n_opt"] == 48
    assert entries["winogrande"]["scoring"] == "letters"
    assert list(rows_of(record, "winogrande")) == ["Baseline", "Final"]


# -- the optimization split -------------------------------------------------------------------


def test_the_optimization_split_of_a_run_is_refused_unless_asked(searches):
    run = searches["boolq"]
    plan = build_plan([f"run={run}", "split=optimization"])
    from tale_opt.evaluate.run import run_evaluation

    with pytest.raises(UsageError, match="allow_optimization_split=true"):
        run_evaluation(plan)
    record = run_evaluate(f"run={run}", "split=optimization", "allow_optimization_split=true")
    assert record["split"] == "optimization"
    rows = rows_of(record, "boolq")
    # The Baseline on the split the search optimized on is the search's own baseline there.
    theirs = read_jsonl(run / "predictions" / "optimization_baseline.jsonl")
    assert predictions_of(record, rows["Baseline"]) == theirs
    # Another seed moves the held-out part of a one-source task (here: all but the new
    # optimization part) onto the search's optimization examples: refused too.
    plan = build_plan([f"run={run}", "seed=3", "n_eval=null"])
    with pytest.raises(UsageError, match=r"in the optimization split of the search in .* seed"):
        run_evaluation(plan)


def test_the_optimization_split_of_a_model_without_a_run_is_just_a_split(model_dir):
    record = run_evaluate(f"model.path={model_dir}", "split=optimization", "n_opt=5")
    assert record["split"] == "optimization" and record["tasks"][0]["n_examples"] == 5


# -- the user's own task configs --------------------------------------------------------------


@pytest.fixture
def user_conf(tmp_path) -> Path:
    conf = tmp_path / "my_conf"
    (conf / "task").mkdir(parents=True)
    (conf / "task" / "my_task.yaml").write_text(
        "defaults:\n  - boolq\n  - _self_\n\nname: my_task\nn_opt: 4\nn_eval: 5\n"
    )
    return conf


def test_a_task_of_the_users_config_dir(user_conf, model_dir, capsys):
    for where in (f"--config-dir={user_conf}", f"hydra.searchpath=[file://{user_conf}]"):
        main([where, f"model.path={model_dir}", "tasks=[my_task,boolq]", "n_eval=5"])
        out = capsys.readouterr().out
        assert "| my_task | Baseline |" in out and "| boolq | Baseline |" in out
    record_path = next(Path("outputs/evaluate").glob("*/*/evaluation.json"))
    entries = {e["task"]: e for e in json.loads(record_path.read_text())["tasks"]}
    assert entries["my_task"]["n_examples"] == 5 and entries["my_task"]["n_opt"] == 4
    # Two commands, two fresh directories.
    assert len(list(Path("outputs/evaluate").glob("*/*/evaluation.json"))) == 2
    with pytest.raises(SystemExit) as exit_code:
        main([f"model.path={model_dir}", "task=my_task"])  # not on the search path
    assert exit_code.value.code == 2
    assert "unknown task 'my_task'" in capsys.readouterr().err


# -- bad input: one error line, exit code 2, no directory -------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run=RUN", "pick=fnal"], "unknown pick 'fnal'. Did you mean 'final'?"),
        (["run=RUN/nope"], "does not exist; pass a search's output directory"),
        (
            ["drop=[2,9]"],
            "drop=[2,9]: layer 9 is out of range for a model with 4 decoder layers (valid: 0..3)",
        ),  # fmt: skip
        (["drop=[0,1,2,3]"], "drops all 4 decoder layers; keep at least one"),
        (["drop=3,7"], "give a list in brackets, drop=[3,7]"),
        (["task=arc_easy,boolq"], "tasks=[arc_easy,boolq]"),
        (["pick=final"], "pick= chooses among a search's configurations; give run=DIR too"),
        (["run=RUN", "model.path=elsewhere"], "model.path comes from the search"),
        (["run=RUN", "drop=[1]"], "give one"),
        (["split=test"], "split must be heldout or optimization, but got 'test'"),
        (["tasks=[boolq,boolq]"], "task 'boolq' is listed twice"),
        (["tasks=[boolq,mmlux]"], "unknown task 'mmlux'. Did you mean 'mmlu'?"),
        (["--bogus"], "evaluate has no option '--bogus'"),
        (["runs=[RUN,RUN]"], "quote each directory whose name holds '=' or ','"),
    ],
)
def test_bad_input_is_one_error_line(argv, message, searches, model_dir, capsys):
    argv = [a.replace("RUN", str(searches["boolq"])) for a in argv]
    if not any(a.startswith("run=") for a in argv):
        argv.append(f"model.path={model_dir}")
    with pytest.raises(SystemExit) as exit_code:
        main(argv)
    assert exit_code.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1 and "Traceback" not in err
    assert not Path("outputs").exists()  # nothing was written


def test_out_that_holds_an_evaluation_is_refused(model_dir, tmp_path):
    out = tmp_path / "mine"
    record = run_evaluate(f"model.path={model_dir}", "n_eval=4", f"out={out}")
    assert Path(record["dir"]) == out and (out / "evaluation.md").is_file()
    with pytest.raises(UsageError, match="already holds an evaluation"):
        build_plan([f"model.path={model_dir}", f"out={out}"])


def test_the_command_line_prints_the_table(searches):
    proc = run_cli("evaluate", f"run={searches['arc_easy_cloze']}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tale evaluate — model tiny-wide · held-out split" in proc.stdout
    assert "| arc_easy_cloze | Final |" in proc.stdout
    assert "never seen by the search" in proc.stdout
    proc = run_cli("evaluate", "run=does/not/exist")
    assert_usage_error(proc, "run directory 'does/not/exist' does not exist")
