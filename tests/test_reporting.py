"""Plots of one search and the comparison report of several: the data behind each picture is
checked, and every file is a non-empty PNG or markdown."""

from __future__ import annotations

import csv
import json
import uuid

import pytest

from tale_opt.commands.report import main as report_main
from tale_opt.errors import UsageError
from tale_opt.reporting import heatmap_matrix, parse_candidates, read_candidates
from tale_opt.reporting.compare import comparison_markdown, groups_table, search_view
from tale_opt.reporting.files import write_comparison_report
from tale_opt.reporting.plots import (
    HEATMAP_PNG,
    TRAJECTORY_PNG,
    plot_heatmap,
    plot_trajectory,
    write_search_plots,
)
from tale_opt.tracking import build_tracker
from tale_opt.tracking.query import RunRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A greedy search over 5 layers: round 1 accepts layer 2, round 2 accepts layer 4, round 3
# finds nothing above the threshold and stops. One round-2 candidate was stopped early.
ROWS = [
    {"round": 0, "drop_key": "", "status": "complete", "score": 0.50},
    *(
        {"round": 1, "drop_key": str(k), "status": "complete", "score": s}
        for k, s in zip(range(5), (0.30, 0.40, 0.60, 0.45, 0.55), strict=True)
    ),
    *(
        {"round": 2, "drop_key": key, "status": status, "score": s}
        for key, status, s in (
            ("0,2", "pruned", 0.20),
            ("1,2", "complete", 0.50),
            ("2,3", "complete", 0.52),
            ("2,4", "complete", 0.62),
        )
    ),
    *(
        {"round": 3, "drop_key": key, "status": "complete", "score": s}
        for key, s in (("0,2,4", 0.30), ("1,2,4", 0.35), ("2,3,4", 0.38))
    ),
]
TRAJECTORY = [[], [2], [2, 4]]
SUMMARY = {
    "model": "tiny",
    "task": "arc_easy",
    "searcher": "tale",
    "seed": 0,
    "num_layers": 5,
    "baseline_accuracy": 0.5,
    "threshold": 0.42,
    "stop_reason": "below_threshold",
    "trajectory": [
        {"drop_layers": d, "n_dropped": len(d), "score": s}
        for d, s in zip(TRAJECTORY, (0.5, 0.6, 0.62), strict=True)
    ],
    "baseline": {"drop_layers": [], "n_dropped": 0, "score": 0.5, "heldout": {"accuracy": 0.48}},
    "best": {
        "drop_layers": [2, 4],
        "n_dropped": 2,
        "score": 0.62,
        "speedup_estimate": 1.67,
        "heldout": {"accuracy": 0.5},
    },
    "bsba": {
        "drop_layers": [2, 4],
        "n_dropped": 2,
        "score": 0.62,
        "speedup_estimate": 1.67,
        "heldout": {"accuracy": 0.5},
    },
}


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("trajectory", [TRAJECTORY, None], ids=["given", "inferred"])
def test_heatmap_matrix_places_each_candidate_at_its_round_and_layer(trajectory):
    heatmap = heatmap_matrix(parse_candidates(ROWS), num_layers=5, trajectory=trajectory)
    assert heatmap.rounds == [1, 2, 3]
    assert heatmap.values == [
        [0.30, 0.40, 0.60, 0.45, 0.55],
        [0.20, 0.50, None, 0.52, 0.62],  # layer 2 was removed in round 1
        [0.30, 0.35, None, 0.38, None],
    ]
    assert heatmap.pruned[1] == [True, False, False, False, False]
    assert heatmap.chosen == {1: 2, 2: 4}  # round 3 accepted nothing
    assert heatmap.skipped == 0


def test_heatmap_skips_what_is_not_a_greedy_step_and_counts_resumed_rows_once():
    rows = [
        *ROWS,
        {"round": 2, "drop_key": "2,4", "status": "complete", "score": 0.62},
        {"round": 2, "drop_key": "0,1", "status": "complete", "score": 0.1},
    ]
    candidates = parse_candidates(rows)
    assert len(candidates) == len(ROWS) + 1
    heatmap = heatmap_matrix(candidates, num_layers=5, trajectory=TRAJECTORY)
    assert heatmap.skipped == 1 and heatmap.values[1][4] == 0.62


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    with (run / "candidate_results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["round", "drop_key", "status", "score"])
        writer.writeheader()
        writer.writerows(ROWS)
    return run


def test_search_plots_are_written_from_a_run_directory(tmp_path):
    run = _run_dir(tmp_path)
    assert len(read_candidates(run / "candidate_results.csv")) == len(ROWS)
    written = write_search_plots(run)
    assert [p.name for p in written] == [TRAJECTORY_PNG, HEATMAP_PNG]
    assert all(_is_png(p) for p in written)


def test_plots_cope_with_a_sparse_summary(tmp_path):
    sparse = {"trajectory": [{"score": 0.4, "n_dropped": 0}], "baseline_accuracy": 0.4}
    assert _is_png(plot_trajectory(sparse, tmp_path / "t.png"))
    heatmap = heatmap_matrix(parse_candidates(ROWS[:6]), num_layers=5)
    assert _is_png(plot_heatmap(heatmap, tmp_path / "h.png"))  # no baseline: plain colours


def _record(run_id: str, searcher: str, seed: int, best_heldout: float, **metrics) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        run_name=None,
        status="FINISHED",
        start_time=0,
        params={},
        tags={
            "model": "tiny",
            "task": "arc_easy",
            "searcher": searcher,
            "seed": str(seed),
            "tale_opt.best.drop": "2,4",
        },
        metrics={
            "num_layers": 5,
            "baseline.score": 0.5,
            "baseline.heldout.accuracy": 0.48,
            "baseline.n_dropped": 0,
            "best.score": 0.62,
            "best.n_dropped": 2,
            "best.heldout.accuracy": best_heldout,
            "best.speedup_estimate": 1.67,
            **metrics,
        },
        history={"trajectory.score": [(0, 0.5), (1, 0.6), (2, 0.62)]},
    )


def test_search_views_and_tables():
    runs = [
        _record(
            "a" * 32,
            "tale",
            0,
            0.50,
            **{
                "best.speedup_measured": 1.4,
                "best.tflops": 2.0,
                "best.heldout.n_correct": 25,
                "best.heldout.n_examples": 50,
                "best.heldout.vs_baseline.only_pick": 6,
                "best.heldout.vs_baseline.only_baseline": 5,
                "best.heldout.vs_baseline.p_value": 1.0,
            },
        ),  # fmt: skip
        _record("b" * 32, "tale", 1, 0.54),
        _record("c" * 32, "sleb", 0, 0.40),
    ]
    views = [search_view(r) for r in runs]
    first = views[0]
    assert (first.model, first.task, first.searcher, first.seed) == (
        "tiny",
        "arc_easy",
        "tale",
        "0",
    )
    assert first.picks["best"].speedup == 1.4 and first.picks["best"].speedup_measured
    assert not views[1].picks["best"].speedup_measured
    assert first.trajectory == [(0, 0.5), (1, 0.6), (2, 0.62)]
    markdown = comparison_markdown(views)
    # One row per pick, the search's own columns on its first: held-out accuracy with its
    # 95% interval where the counts were logged, and the paired test against Baseline.
    assert "| aaaaaaaa | tale · tiny · arc_easy · s0 | 5 | Baseline | 0 | 50.0 | 48.0 | — |" in (
        markdown
    )
    assert "|  |  |  | Best | 2 (2,4) | 62.0 | 50.0 [36.6, 63.4] | +6/−5, p = 1.00 | 1.40× |" in (
        markdown
    )
    table = markdown.split("## Runs")[1].split("##")[0].strip().splitlines()
    assert all(line.count("|") == 11 for line in table), "ten columns"
    assert len(table) == 2 + 4 * len(views)  # Baseline, Best, BSBA, Final per search
    assert first.picks["best"].heldout_test == (6, 5, 1.0)
    assert views[1].picks["best"].heldout_interval is None
    assert "1.40× |" in markdown and "1.67× (est.)" in markdown
    groups = groups_table(views)
    assert "| tiny | arc_easy | tale | 2 | 48.0 ± 0.0 | 52.0 ± 2.8 | 2.0 ± 0.0 |" in groups
    assert "| tiny | arc_easy | sleb | 1 | 48.0 | 40.0 | 2.0 |" in groups


def test_searches_without_a_result_are_named_not_tabulated():
    """An interrupted search has a parent run but no summary: no row of dashes for it."""
    done = _record("a" * 32, "tale", 0, 0.50)
    interrupted = RunRecord(
        run_id="d" * 32, run_name=None, status="KILLED", start_time=0, params={},
        tags={"model": "tiny", "task": "arc_easy", "searcher": "tale", "seed": "1"},
        metrics={},
    )  # fmt: skip
    views = [search_view(r) for r in (done, interrupted)]
    assert views[0].has_result and not views[1].has_result
    markdown = comparison_markdown(views)
    assert "dddddddd" not in markdown.split("## Runs")[1], "not in the tables"
    assert (
        "Left out: 1 search(es) without a result, interrupted or still running: dddddddd "
        "(tale · tiny · arc_easy · s1, KILLED)" in markdown
    )
    assert "1 search(es)" in markdown and "| aaaaaaaa |" in markdown
    assert "| tiny | arc_easy | tale | 1 |" in markdown  # the mean over seeds: one search


def test_a_report_of_only_unfinished_searches_is_a_usage_error(tmp_path):
    interrupted = RunRecord(
        run_id="d" * 32, run_name=None, status="RUNNING", start_time=0, params={},
        tags={"model": "tiny", "task": "arc_easy", "searcher": "tale", "seed": "1"},
        metrics={},
    )  # fmt: skip
    with pytest.raises(UsageError, match="nothing to compare: Left out: 1 search"):
        write_comparison_report([interrupted], tmp_path / "report")
    assert not (tmp_path / "report").exists()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Two searches (tale, sleb) logged to a SQLite backend; returns (uri, experiment, ids)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('report') / 'mlflow.db'}"
    experiment = f"report-{uuid.uuid4().hex[:8]}"
    ids = []
    for searcher in ("tale", "sleb"):
        tracker = build_tracker({"uri": uri, "experiment": experiment})
        parent = tracker.start_search(
            {"searcher": {"name": searcher}},
            {"model": "tiny", "task": "arc_easy", "searcher": searcher, "seed": "0"},
        )
        tracker.log_summary({**SUMMARY, "searcher": searcher})
        tracker.finish()
        ids.append(parent)
    return uri, experiment, ids


@pytest.mark.slow
def test_report_cli_compares_searches_from_mlflow(logged, tmp_path, capsys):
    uri, experiment, (tale, sleb) = logged
    report_main(["--tracking-uri", uri, "--experiment", experiment, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert tale[:8] in out and sleb[:8] in out
    assert (tmp_path / "comparison.md").read_text().startswith("# TALE searches compared")
    assert _is_png(tmp_path / "comparison.png")

    report_main(
        [
            "--tracking-uri",
            uri,
            "--experiment",
            experiment,
            "--out",
            str(tmp_path),
            "--filter",
            "tags.searcher = 'sleb'",
        ]
    )
    out = capsys.readouterr().out
    assert sleb[:8] in out and tale[:8] not in out
    report_main(["--tracking-uri", uri, "--runs", tale, "--out", str(tmp_path)])
    assert tale[:8] in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--filter", "tags.searcher = 'none-such'"], "no searches matching"),
        (["--experiment", "missing"], "no experiment 'missing'"),
        (["--max-runs", "0"], "--max-runs must be >= 1"),
    ],
)
def test_report_cli_errors_exit_2_with_one_line(logged, tmp_path, capsys, extra, message):
    uri, experiment, _ = logged
    argv = ["--tracking-uri", uri, "--experiment", experiment, "--out", str(tmp_path), *extra]
    with pytest.raises(SystemExit) as exit_info:
        report_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
