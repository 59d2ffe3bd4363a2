"""Side-by-side comparison of several searches (searchers, seeds, models) read from MLflow.

Input: parent runs as `RunRecord`s (tale_opt.tracking.query), whose metrics and tags were
written by `Tracker.log_summary` (names in tale_opt.tracking.records). Output: a markdown
report (one row per search, then means over seeds per model × task × searcher) and a PNG
(held-out accuracy of the reported picks against layers dropped, and the optimization
trajectories).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tale_opt.stats import accuracy_interval, format_accuracy, format_p
from tale_opt.tracking import records as rec
from tale_opt.tracking.records import PICKS

# Final (most layers dropped; k of them with n_drop=k) compares criteria at equal sparsity.
SHOWN_PICKS = ("best", "bsba", "final")
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"


@dataclass(frozen=True)
class PickView:
    """One reported configuration of a search."""

    n_dropped: int | None
    drop: str | None
    opt_accuracy: float | None
    heldout_accuracy: float | None
    speedup: float | None
    speedup_measured: bool
    tflops_per_example: float | None  # of evaluating the held-out split
    heldout_interval: tuple[float, float] | None = None  # 95% Wilson
    opt_interval: tuple[float, float] | None = None  # 95% Wilson
    # Exact McNemar test against Baseline on the held-out split: (only pick, only Baseline, p)
    heldout_test: tuple[int, int, float] | None = None


@dataclass(frozen=True)
class SearchView:
    """What the comparison shows of one search (one parent run)."""

    run_id: str
    model: str
    task: str
    searcher: str
    seed: str
    num_layers: int | None
    picks: dict[str, PickView]
    trajectory: list[tuple[int, float]] = field(default_factory=list)
    status: str = "FINISHED"  # the parent run's MLflow status

    @property
    def label(self) -> str:
        return f"{self.searcher} · {self.model} · {self.task} · s{self.seed}"

    @property
    def has_result(self) -> bool:
        """Whether the search got as far as its summary: an interrupted (or still running)
        search has a parent run but no picks, only a row of dashes to show."""
        return any(p.n_dropped is not None or p.heldout_accuracy is not None
                   for p in self.picks.values())  # fmt: skip


def _first(mapping: Mapping[str, Any], *keys: str, default: str = "?") -> str:
    for key in keys:
        if mapping.get(key) not in (None, ""):
            return str(mapping[key])
    return default


def _section(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """The metrics under `prefix` (e.g. ``best.heldout.``), without it."""
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def search_view(record: Any) -> SearchView:
    """Read a parent run (tags first, then the logged config params) into a `SearchView`."""
    tags, params, metrics = record.tags, record.params, record.metrics
    # Optimization scores are accuracies unless the searcher ranked by a probe (SLEB: negative
    # perplexity); those are left out rather than shown as percentages.
    accuracy = tags.get(rec.SCORE_PROBE_TAG, rec.TASK_ACCURACY) == rec.TASK_ACCURACY
    n_eval = metrics.get("n_eval")
    picks = {}
    for pick, _ in PICKS:
        measured = metrics.get(f"{pick}.speedup_measured")
        n_dropped = metrics.get(f"{pick}.n_dropped")
        held = _section(metrics, f"{pick}.heldout.")
        opt = _section(metrics, f"{pick}.opt.")
        if not opt and accuracy:  # logged before metrics were named by split
            opt = {**_section(metrics, f"{pick}."), "accuracy": metrics.get(f"{pick}.score")}
        tflops = held.get("tflops_per_example")
        if tflops is None and metrics.get(f"{pick}.tflops") is not None and n_eval:
            tflops = metrics[f"{pick}.tflops"] / n_eval  # older runs: the held-out total
        test = None
        if all(f"vs_baseline.{k}" in held for k in ("only_pick", "only_baseline", "p_value")):
            test = (
                int(held["vs_baseline.only_pick"]),
                int(held["vs_baseline.only_baseline"]),
                float(held["vs_baseline.p_value"]),
            )
        picks[pick] = PickView(
            n_dropped=None if n_dropped is None else int(n_dropped),
            drop=tags.get(f"tale_opt.{pick}.drop"),
            opt_accuracy=opt.get("accuracy"),
            heldout_accuracy=held.get("accuracy"),
            speedup=measured if measured is not None else metrics.get(f"{pick}.speedup_estimate"),
            speedup_measured=measured is not None,
            tflops_per_example=tflops,
            heldout_interval=accuracy_interval(held),
            opt_interval=accuracy_interval(opt) if opt.get("accuracy") is not None else None,
            heldout_test=test,
        )
    num_layers = metrics.get("num_layers")
    steps = dict(record.history.get("trajectory.n_dropped", []))
    trajectory = [
        (int(steps.get(step, step)), value)
        for step, value in sorted(record.history.get("trajectory.score", []))
        if accuracy
    ]
    return SearchView(
        run_id=record.run_id,
        model=_first(tags, "model", default=_first(params, "model.name", "model.path")),
        task=_first(tags, "task", default=_first(params, "task.name")),
        searcher=_first(tags, "searcher", default=_first(params, "searcher.name")),
        seed=_first(tags, "seed", default=_first(params, "seed")),
        num_layers=None if num_layers is None else int(num_layers),
        picks=picks,
        trajectory=trajectory,
        status=getattr(record, "status", "FINISHED") or "FINISHED",
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _heldout(pick: PickView) -> str:
    return format_accuracy(pick.heldout_accuracy, pick.heldout_interval)


def _versus(pick: PickView) -> str:
    """``+5/−17, p = 0.017``: held-out examples only the pick / only Baseline gets right."""
    if pick.heldout_test is None:
        return "-"
    only_pick, only_base, p = pick.heldout_test
    return f"+{only_pick}/−{only_base}, {format_p(p)}"


def _speed(pick: PickView) -> str:
    if pick.speedup is None:
        return "-"
    return f"{pick.speedup:.2f}×" + ("" if pick.speedup_measured else " (est.)")


def _dropped(pick: PickView) -> str:
    if pick.n_dropped is None:
        return "-"
    return f"{pick.n_dropped} ({pick.drop})" if pick.drop else str(pick.n_dropped)


def runs_table(views: Sequence[SearchView]) -> str:
    """One block of rows per search, one row per pick (Baseline, then Best, BSBA and Final):
    ten columns, where one row per search with every pick side by side needed 23."""
    head = [
        "run", "search", "layers", "pick", "dropped", "opt %", "held-out % [95% CI]",
        "vs Baseline", "speed-up", "TFLOPs",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for v in views:
        for i, pick in enumerate(("baseline", *SHOWN_PICKS)):
            p = v.picks[pick]
            first = i == 0  # the search's own columns only on its first row
            layers = "-" if v.num_layers is None else str(v.num_layers)
            cells = [
                v.run_id[:8] if first else "",
                v.label if first else "",
                layers if first else "",
                dict(PICKS)[pick],
                _dropped(p),
                _pct(p.opt_accuracy),
                _heldout(p),
                "—" if pick == "baseline" else _versus(p),
                _speed(p),
                "-" if p.tflops_per_example is None else f"{p.tflops_per_example:.4g}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def left_out_note(views: Sequence[SearchView]) -> str:
    """The searches without a result, named so they can be finished; "" when there are none."""
    missing = [v for v in views if not v.has_result]
    if not missing:
        return ""
    named = ", ".join(f"{v.run_id[:8]} ({v.label}, {v.status})" for v in missing)
    return (
        f"Left out: {len(missing)} search(es) without a result, interrupted or still running: "
        f"{named}. Running the same command again resumes an interrupted search."
    )


def _mean_sd(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def groups_table(views: Sequence[SearchView]) -> str:
    """Per model × task × searcher: mean ± sd over its searches (seeds) of the key figures."""
    groups: dict[tuple[str, str, str], list[SearchView]] = {}
    for v in views:
        groups.setdefault((v.model, v.task, v.searcher), []).append(v)
    lines = [
        "| model | task | searcher | runs | baseline held-out % | Best held-out % | Best dropped "
        "| BSBA held-out % | BSBA dropped | Final held-out % | Final dropped |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, task, searcher), members in sorted(groups.items()):

        def col(pick: str, attr: str, members: list[SearchView] = members) -> list[float]:
            values = (getattr(m.picks[pick], attr) for m in members)
            return [float(x) for x in values if x is not None]

        lines.append(
            f"| {model} | {task} | {searcher} | {len(members)} "
            f"| {_mean_sd(col('baseline', 'heldout_accuracy'))} "
            f"| {_mean_sd(col('best', 'heldout_accuracy'))} "
            f"| {_mean_sd(col('best', 'n_dropped'), scale=1)} "
            f"| {_mean_sd(col('bsba', 'heldout_accuracy'))} "
            f"| {_mean_sd(col('bsba', 'n_dropped'), scale=1)} "
            f"| {_mean_sd(col('final', 'heldout_accuracy'))} "
            f"| {_mean_sd(col('final', 'n_dropped'), scale=1)} |"
        )
    return "\n".join(lines)


def comparison_markdown(views: Sequence[SearchView], source: str = "") -> str:
    """The whole markdown report; searches without a result are named, not tabulated."""
    note = left_out_note(views)
    views = [v for v in views if v.has_result]
    parts = [
        "# TALE searches compared",
        "",
        *([note, ""] if note else []),
        f"{len(views)} search(es){f' from {source}' if source else ''}. Accuracies in %; "
        "held-out = the evaluation split the search never saw, with its 95% Wilson interval. "
        "vs Baseline: held-out examples only the pick / only Baseline gets right, and the "
        "exact McNemar p-value (below 0.05: a real difference). Speed-ups marked (est.) are "
        "the layer-count estimate L / (L − k); others were measured.",
        "",
        "## Runs",
        "",
        runs_table(views),
        "",
        "## Mean ± sd over seeds",
        "",
        groups_table(views),
        "",
    ]
    return "\n".join(parts)
