"""The layer-selection stability report: the statistics on hand-computed cases, the grouping of
runs, and `python -m tale_opt report --stability` end to end on a real MLflow (SQLite) store."""

from __future__ import annotations

import math
import subprocess
import sys
import uuid

import pytest

from tale_opt.commands.report import main as report_main
from tale_opt.reporting.stability import (
    STABILITY_MD,
    STABILITY_PNG,
    Spread,
    collect,
    jaccard,
    mean_pairwise_jaccard,
    parse_drop,
    selection_counts,
    selection_frequency,
    spread,
    stability_markdown,
)
from tale_opt.tracking import build_tracker, search_tags
from tale_opt.tracking.query import RunRecord
from tests.test_reporting import PNG_MAGIC


# -- the statistics ---------------------------------------------------------------------------
def test_parse_drop():
    assert parse_drop("2,4") == {2, 4}
    assert parse_drop("") == frozenset() and parse_drop(None) == frozenset()


def test_selection_counts_and_frequency():
    sets = [{1, 2}, {2}, set(), {2, 3}]
    assert selection_counts(sets) == {1: 1, 2: 3, 3: 1}
    assert selection_frequency(sets, 5) == [0.0, 0.25, 0.75, 0.25, 0.0]
    assert selection_frequency([set()], 3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="at least one"):
        selection_frequency([], 3)
    with pytest.raises(ValueError, match="outside"):
        selection_frequency([{3}], 3)


def test_jaccard():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert jaccard({1, 2}, {2, 1}) == 1.0
    assert jaccard(set(), set()) == 1.0  # J(∅, ∅) = 1 by definition
    assert jaccard({1}, set()) == 0.0
    assert jaccard({1}, {2}) == 0.0


def test_mean_pairwise_jaccard():
    # Pairs: {1,2}/{2,3} = 1/3, {1,2}/{2} = 1/2, {2,3}/{2} = 1/2 -> mean 4/9.
    assert mean_pairwise_jaccard([{1, 2}, {2, 3}, {2}]) == pytest.approx(4 / 9)
    assert mean_pairwise_jaccard([set(), set()]) == 1.0
    assert mean_pairwise_jaccard([set(), set(), {4}]) == pytest.approx(1 / 3)  # 1, 0, 0
    assert mean_pairwise_jaccard([{5}]) is None  # one seed: no pair
    assert mean_pairwise_jaccard([]) is None


def test_spread():
    s = spread([0.5, 0.7, None, 0.6])
    assert (s.n, s.min, s.max) == (3, 0.5, 0.7)
    assert s.mean == pytest.approx(0.6) and s.sd == pytest.approx(0.1)
    assert spread([0.4]) == Spread(1, 0.4, None, 0.4, 0.4)
    assert spread([]) is None and spread([None]) is None


def test_the_statistics_module_imports_neither_mlflow_nor_matplotlib():
    code = (
        "import sys, tale_opt.reporting.stability;"
        "bad = [m for m in ('mlflow', 'matplotlib') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=1800)


# -- grouping (plain records, no backend) -----------------------------------------------------
def _record(run_id, seed, n_opt, drop, final, baseline=0.6, *, start=0, **config):
    params = {
        "model.name": "tiny",
        "task.name": "arc_easy",
        "searcher.name": "tale",
        "searcher.epsilon": "0.08",
        "searcher.max_drop": "2",
        "seed": str(seed),
        "n_opt": str(n_opt),
        "storage.path": f"outputs/{run_id}.db",  # where, not what: not a setting
        **config,
    }
    metrics = {"num_layers": 6.0, "baseline.heldout.accuracy": baseline}
    if final is not None:
        metrics["final.heldout.accuracy"] = final
    tags = {"seed": str(seed)} | ({} if drop is None else {"tale_opt.final.drop": drop})
    return RunRecord(run_id, None, "FINISHED", start, params, tags, metrics)


def test_a_key_a_newer_release_logs_at_its_do_nothing_value_joins_the_older_runs_group():
    # Seeds 0-1 logged before multi-task search existed; seed 2 logs tasks=null and the
    # aggregate that only applies with tasks. One ablation, one group; real tasks split it.
    newer = {"tasks": "null", "multitask.aggregate": "mean", "n_drop": "null"}
    data = collect(
        [
            _record("a", 0, 16, "2", 0.5),
            _record("b", 1, 16, "3", 0.5),
            _record("c", 2, 16, "2", 0.5, **newer),
            _record("d", 3, 16, "2", 0.5, **{**newer, "tasks": '["arc_easy", "boolq"]'}),
        ]
    )
    assert [[r.run_id for c in g.cells for r in c.runs] for g in data.groups] == [
        ["a", "b", "c"],
        ["d"],
    ]


def test_collect_groups_by_settings_then_n_opt_and_keeps_the_newest_run_per_seed():
    data = collect(
        [
            _record("a", 0, 16, "2,4", 0.5),
            _record("b", 1, 16, "2,5", 0.6),
            _record("c", 1, 16, "1", 0.1, start=-1),  # older run of seed 1: superseded
            _record("d", 0, 32, "", 0.55),
            _record("e", 2, 32, None, None),  # no finished summary
            _record("f", 0, 16, "3", 0.4, **{"searcher.max_drop": "3"}),  # another group
            _record("g", 0, 16, "3", 0.4, **{"eval.batch_size": "4"}),  # and another
        ]
    )
    assert data.total == 7 and data.unfinished == ["e"] and data.superseded == ["c"]
    assert [g.settings["max_drop"] for g in data.groups] == ["2", "2", "3"]
    main = data.groups[0] if "eval.batch_size" not in data.groups[0].config else data.groups[1]
    assert [(c.n_opt, [r.run_id for r in c.runs]) for c in main.cells] == [
        (16, ["a", "b"]),
        (32, ["d"]),
    ]
    assert main.cells[0].counts == {2: 2, 4: 1, 5: 1}
    assert main.cells[0].jaccard == pytest.approx(1 / 3)
    assert main.frequency_matrix()[2] == [1.0, 0.0] and main.frequency_matrix()[0] == [0, 0]
    # The only non-headline difference between groups is shown with each of them.
    assert {g.distinct["eval.batch_size"] for g in data.groups} == {"4", "(unset)"}
    markdown = stability_markdown(data)
    assert "7 search(es) read: 5 used; 1 left out without a finished summary" in markdown
    assert "1 superseded by a newer run of the same settings and seed" in markdown


# -- end to end -------------------------------------------------------------------------------
N_EVAL = 20
# (seed, n_opt, Final drop, Final held-out, Baseline held-out), in the order they are logged.
SEARCHES = [
    (0, 16, [2, 4], 0.50, 0.60),
    (1, 16, [2, 4], 0.60, 0.60),
    (2, 16, [2, 5], 0.55, 0.60),
    (0, 32, [2, 4], 0.60, 0.55),
    (1, 32, [2, 4], 0.65, 0.60),
    (2, 32, [1, 3], 0.30, 0.65),  # superseded by the next run (same settings and seed)
    (2, 32, [2, 4], 0.70, 0.65),
]


def _config(seed: int, n_opt: int, epsilon: float = 0.08) -> dict:
    return {
        "model": {"name": "tiny"},
        "task": {"name": "arc_easy", "n_opt": 48},
        "searcher": {"name": "tale", "epsilon": epsilon, "max_drop": 2, "n_drop": None},
        "eval": {"scoring": "letters"},
        "seed": seed,
        "n_opt": n_opt,
        "n_eval": N_EVAL,
        "n_drop": None,
    }


def _summary(n_opt: int, drop: list[int], final: float, baseline: float) -> dict:
    def pick(layers: list[int], accuracy: float) -> dict:
        correct = round(accuracy * N_EVAL)
        heldout = {"accuracy": accuracy, "n_correct": correct, "n_examples": N_EVAL}
        return {"drop_layers": layers, "n_dropped": len(layers), "heldout": heldout}

    return {
        "num_layers": 6,
        "n_opt": n_opt,
        "n_eval": N_EVAL,
        "baseline": pick([], baseline),
        "final": pick(drop, final),
    }


def _log(uri: str, experiment: str, config: dict, summary: dict | None) -> str:
    tracker = build_tracker({"uri": uri, "experiment": experiment})
    parent = tracker.start_search(config, search_tags(config))
    if summary is None:
        tracker.finish("KILLED")
    else:
        tracker.log_summary(summary)
        tracker.finish()
    return parent


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """SEARCHES, a killed search and one of another group in a SQLite MLflow store; returns
    (uri, experiment, parent run ids of SEARCHES)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('stability') / 'mlflow.db'}"
    experiment = f"stability-{uuid.uuid4().hex[:8]}"
    ids = [
        _log(uri, experiment, _config(s, n), _summary(n, d, f, b)) for s, n, d, f, b in SEARCHES
    ]
    _log(uri, experiment, _config(3, 32), None)  # killed before its summary: left out
    # Another epsilon is another group; its only search drops nothing.
    _log(uri, experiment, _config(0, 16, epsilon=0.2), _summary(16, [], 0.6, 0.6))
    return uri, experiment, ids


@pytest.mark.slow
def test_stability_report_from_mlflow(logged, tmp_path, capsys):
    uri, experiment, ids = logged
    out = tmp_path / "report"
    argv = ["--stability", "--tracking-uri", uri, "--experiment", experiment, "--out", str(out)]
    report_main(argv)
    printed = capsys.readouterr().out
    markdown = (out / STABILITY_MD).read_text()
    assert markdown in printed
    png = out / STABILITY_PNG
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC

    assert "9 search(es) read from " in markdown
    assert ": 7 used; 1 left out without a finished summary (no `final.heldout.accuracy`); " in (
        markdown
    )
    assert "1 superseded by a newer run of the same settings and seed." in markdown
    main, other = markdown.split("## tiny · arc_easy · tale")[1:]
    assert "Settings: scoring=letters, epsilon=0.08, max_drop=2, n_drop=null, n_eval=20" in main
    assert "epsilon=0.2" in other
    # n_opt=16: Jaccard of {2,4},{2,4},{2,5} = (1 + 1/3 + 1/3) / 3 = 0.556; Final 50/60/55 %.
    assert (
        "| 16 | 3 | 0.556 | 2 | 2,4 (2/3) | 55.0 | 5.0 | 50.0 | 60.0 | 60.0 | 0.0 | 60.0 | 60.0 |"
        in (main)
    )
    # n_opt=32: every seed drops {2,4} (the superseded {1,3} run is not counted).
    assert (
        "| 32 | 3 | 1.000 | 1 | 2,4 (3/3) | 65.0 | 5.0 | 60.0 | 70.0 | 60.0 | 5.0 | 55.0 | 65.0 |"
        in (main)
    )
    # Layer 1 was dropped only by the superseded run: no row for it.
    frequency = main.split("drops the layer):")[1].split("<details>")[0].split()
    assert " ".join(frequency) == (
        "| layer | n_opt=16 | n_opt=32 | |---:|---:|---:| "
        "| 2 | 3/3 | 3/3 | | 4 | 2/3 | 3/3 | | 5 | 1/3 | 0/3 |"
    )
    assert f"| 32 | 2 | 2,4 | 70.0 [48.1, 85.5] | 65.0 | {ids[-1][:8]} |" in main
    assert ids[-2][:8] not in markdown
    # One seed, nothing dropped: Jaccard undefined, spread without sd.
    assert (
        "| 16 | 1 | - | 1 | none (1/1) | 60.0 | - | 60.0 | 60.0 | 60.0 | - | 60.0 | 60.0 |"
        in other
    )
    assert "No seed's Final drops any layer." in other
    assert math.isclose(float(main.split("| 16 | 3 | ")[1].split(" |")[0]), 5 / 9, abs_tol=5e-4)


def test_stability_report_without_finished_searches_exits_2(logged, tmp_path, capsys):
    uri, experiment, _ = logged
    argv = ["--stability", "--tracking-uri", uri, "--experiment", experiment]
    argv += ["--filter", "tags.seed = '3'", "--out", str(tmp_path)]  # only the killed search
    with pytest.raises(SystemExit) as exit_info:
        report_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: none of the 1 search(es) read has a finished summary")
