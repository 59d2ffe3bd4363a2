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
from tale_opt.reporting.compare import compare_searches, search_view
from tale_opt.reporting.compare_plot import draw_comparison, plot_comparison
from tale_opt.reporting.compare_tables import comparison_markdown
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


def _record(
    run_id: str,
    searcher: str,
    seed: int,
    best_heldout: float,
    *,
    status: str = "FINISHED",
    start_time: int = 0,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    **metrics,
) -> RunRecord:
    """A parent run as MLflow returns it, with the metric names searches log today."""
    return RunRecord(
        run_id=run_id,
        run_name=None,
        status=status,
        start_time=start_time,
        params=params or {},
        tags={
            "model": "tiny",
            "task": "arc_easy",
            "searcher": searcher,
            "seed": str(seed),
            "tale_opt.best.drop": "2,4",
            **(tags or {}),
        },
        metrics={
            "num_layers": 5,
            "n_eval": 50,
            "baseline.score": 0.5,
            "baseline.opt.accuracy": 0.5,
            "baseline.heldout.accuracy": 0.48,
            "baseline.n_dropped": 0,
            "best.score": 0.62,
            "best.opt.accuracy": 0.62,
            "best.n_dropped": 2,
            "best.heldout.accuracy": best_heldout,
            "best.speedup_estimate": 1.67,
            **metrics,
        },
        history={"trajectory.score": [(0, 0.5), (1, 0.6), (2, 0.62)]},
    )


def _section(markdown: str, pick: str) -> tuple[list[str], list[str]]:
    """The body rows of one pick's runs table and over-seeds table."""
    body = markdown.split(f"## {pick}\n")[1].split("\n## ")[0]
    runs, groups = body.split("Over seeds")
    table = lambda text: [line for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
    return table(runs)[1:], table(groups)[1:]  # without the head (the alignment row is "|---")


def test_search_views_and_one_table_per_pick():
    runs = [
        _record(
            "a" * 32, "tale", 0, 0.50,
            **{
                "best.speedup_measured": 1.4,
                "best.opt.accuracy_ci_low": 0.5, "best.opt.accuracy_ci_high": 0.7,
                "best.heldout.tflops_per_example": 2.0,
                "best.heldout.n_correct": 25, "best.heldout.n_examples": 50,
                "best.heldout.vs_baseline.only_pick": 6,
                "best.heldout.vs_baseline.only_baseline": 5,
                "best.heldout.vs_baseline.p_value": 1.0,
            },
        ),
        _record("b" * 32, "tale", 1, 0.54),
        _record("c" * 32, "sleb", 0, 0.40),
    ]  # fmt: skip
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
    assert first.picks["best"].heldout_test == (6, 5, 1.0)
    assert views[1].picks["best"].heldout_interval is None
    markdown = comparison_markdown(compare_searches(views))
    assert [line for line in markdown.splitlines() if line.startswith("## ")] == [
        "## Baseline", "## Best", "## BSBA", "## AE-HM", "## Final",
    ]  # fmt: skip
    rows, means = _section(markdown, "Best")
    assert len(rows) == 3 and all(row.count("|") == 15 for row in rows), "14 columns"
    assert rows[0].startswith("| cccccccc | sleb · tiny · arc_easy |")  # ordered by group
    assert rows[1] == (
        "| aaaaaaaa | tale · tiny · arc_easy | - | - | - / - | - | 0 | FINISHED | 2 (2,4) "
        "| 62.0 [50.0, 70.0] | 50.0 [36.6, 63.4] | +6/−5, p = 1.00 | 1.40× | 2 |"
    )
    assert "| 1.67× (est.) | - |" in rows[2]
    # Over seeds: model × task × searcher here (no other setting differs).
    assert means == [
        "| sleb · tiny · arc_easy | - | - | - / - | - | 1 (0) | 2.0 | 62.0 | 40.0 | - |",
        "| tale · tiny · arc_easy | - | - | - / - | - | 2 (0, 1) | 2.0 ± 0.0 | 62.0 ± 0.0 "
        "| 52.0 ± 2.8 | - |",
    ]


def test_runs_logged_before_metrics_were_named_by_split_are_read():
    old = RunRecord(
        run_id="e" * 32, run_name=None, status="FINISHED", start_time=0, params={},
        tags={"model": "tiny", "task": "arc_easy", "searcher": "tale", "seed": "0"},
        metrics={
            "n_eval": 40, "best.score": 0.6, "best.n_dropped": 1, "best.tflops": 8.0,
            "best.accuracy_ci_low": 0.4, "best.accuracy_ci_high": 0.75,
            "best.heldout.accuracy": 0.5,
        },
    )  # fmt: skip
    best = search_view(old).picks["best"]
    assert best.opt_accuracy == 0.6 and best.opt_interval == (0.4, 0.75)
    assert best.tflops_per_example == pytest.approx(8.0 / 40)  # the held-out total, then
    perplexity = RunRecord(
        **{**old.__dict__, "tags": {**old.tags, "tale_opt.score_probe": "perplexity"}}
    )
    assert search_view(perplexity).picks["best"].opt_accuracy is None  # -perplexity


def _ablation_run(run_id, epsilon, seed, held, correct, **options) -> RunRecord:
    params = {
        "searcher.name": "tale", "searcher.epsilon": str(epsilon), "n_opt": "48",
        "searcher.max_drop": "2", "searcher.n_drop": "null", "eval.scoring": "loglik",
        "n_eval": "50", "seed": str(seed), "searcher.seed": str(seed),
        "storage.path": f"/runs/{run_id}.db", "workers": "0",  # where, not what: no group
    }  # fmt: skip
    return _record(
        run_id, "tale", seed, held, params=params, tags={"epsilon": str(epsilon)},
        **{"best.heldout.n_correct": correct, "best.heldout.n_examples": 50}, **options,
    )  # fmt: skip


def test_an_ablation_is_grouped_by_every_setting_but_the_seed_each_seed_once():
    runs = [
        _ablation_run("a0" * 16, 0.04, 0, 0.50, 25),
        _ablation_run("a1" * 16, 0.04, 1, 0.60, 30),
        # Killed after its result (a resumed search): shown with its status, out of the means.
        _ablation_run("a2" * 16, 0.04, 2, 0.90, 45, status="KILLED"),
        _ablation_run("b0" * 16, 0.08, 0, 0.40, 20, start_time=1),
        _ablation_run("b1" * 16, 0.08, 1, 0.30, 15, start_time=1),
        _ablation_run("c1" * 16, 0.08, 1, 0.50, 25, start_time=2),  # a rerun of seed 1
    ]
    interrupted = RunRecord(
        run_id="d" * 32, run_name=None, status="KILLED", start_time=0, params={},
        tags={"model": "tiny", "task": "arc_easy", "searcher": "tale", "seed": "3"},
        metrics={},
    )  # fmt: skip
    comparison = compare_searches(search_view(r) for r in [*runs, interrupted])
    assert [g.settings for g in comparison.groups] == [
        {"epsilon": eps, "n_opt": "48", "max_drop": "2", "scoring": "loglik"}
        for eps in ("0.04", "0.08")
    ]
    assert [[m.seed for m in g.members] for g in comparison.groups] == [
        ["0", "1", "2"],
        ["0", "1"],
    ]
    assert [v.run_id for v in comparison.superseded] == ["b1" * 16]
    assert [v.run_id for v in comparison.unfinished] == ["d" * 32]
    markdown = comparison_markdown(comparison)
    assert "Replaced by a rerun of the same settings and seed (each seed counts once): 1 " in (
        markdown
    )
    assert (
        "left out of the means over seeds: 1 search(es) that did not end as FINISHED: a2a2a2a2"
        in (markdown)
    )
    rows, means = _section(markdown, "Best")
    assert len(rows) == 5 and not any("b1b1b1b1 " in r for r in rows)
    assert "| a2a2a2a2 | tale · tiny · arc_easy | 0.04 | 48 | 2 / - | loglik | 2 | KILLED |" in (
        "\n".join(rows)
    )
    # Means over the finished seeds: 0.04 -> 50 and 60 (not the killed 90); 0.08 -> 40 and
    # the rerun's 50; pooled: all their held-out examples together, with a Wilson interval.
    assert means == [
        "| tale · tiny · arc_easy | 0.04 | 48 | 2 / - | loglik | 2 (0, 1) | 2.0 ± 0.0 "
        "| 62.0 ± 0.0 | 55.0 ± 7.1 | 55.0 [45.2, 64.4] |",
        "| tale · tiny · arc_easy | 0.08 | 48 | 2 / - | loglik | 2 (0, 1) | 2.0 ± 0.0 "
        "| 62.0 ± 0.0 | 45.0 ± 7.1 | 45.0 [35.6, 54.8] |",
    ]
    assert "dddddddd" not in markdown.split("## Baseline")[1]


def test_the_comparison_plot_tells_every_series_apart(tmp_path):
    """Six series on exactly the same points: each keeps its own colour and marker, and the
    legend covers none of the data."""
    runs = [
        _ablation_run(f"{i:02d}" * 16, eps, seed, 0.5, 25)
        for i, (eps, seed) in enumerate(
            (eps, seed) for eps in (0.01, 0.02, 0.04, 0.08, 0.16, 0.32) for seed in (0, 1)
        )
    ]
    comparison = compare_searches(search_view(r) for r in runs)
    assert len(comparison.groups) == 6
    fig = draw_comparison(comparison)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    left, right = fig.axes
    styles = {
        (line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()),
         line.get_marker())
        for line in left.lines
        if line.get_marker() not in (None, "None", "")
    }  # fmt: skip
    assert len(styles) == 6
    assert len({c for c, _ in styles}) == 6 and len({m for _, m in styles}) == 6
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        f"tale · ε {eps}" for eps in ("0.01", "0.02", "0.04", "0.08", "0.16", "0.32")
    ]
    box = legend.get_window_extent(renderer)
    for ax in (left, right):
        assert not box.overlaps(ax.get_window_extent(renderer))
    assert _is_png(plot_comparison(comparison, tmp_path / "comparison.png"))


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
