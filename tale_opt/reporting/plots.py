"""PNG plots of one search: the accepted trajectory and the layer × round heatmap."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.pipeline.outputs import opt_metrics
from tale_opt.reporting._mpl import pyplot, save
from tale_opt.reporting.heatmap import Candidate, Heatmap, heatmap_matrix, read_candidates
from tale_opt.stats import accuracy_interval

TRAJECTORY_PNG = "trajectory.png"
HEATMAP_PNG = "layer_heatmap.png"


def _title(summary: Mapping[str, Any]) -> str:
    parts = [summary.get(k) for k in ("model", "task", "searcher")]
    head = " · ".join(str(p) for p in parts if p)
    return f"{head} · seed {summary.get('seed')}" if "seed" in summary else head


def plot_trajectory(
    summary: Mapping[str, Any],
    path: str | Path,
    candidates: Sequence[Candidate] = (),
) -> Path:
    """Accuracy of each accepted configuration against layers dropped, from summary.json.

    Draws the baseline and threshold lines, marks Best (star) and BSBA (diamond), the
    held-out accuracy of the reported picks (hollow markers) when present, and every
    evaluated candidate as a faint dot (its round's spread). Accuracies carry their 95%
    Wilson interval: a band along the accepted trajectory, error bars on held-out points.
    """
    plt = pyplot()
    trajectory = summary.get("trajectory") or []
    # Scores are accuracies, or negative perplexities for a perplexity-probe searcher (SLEB):
    # those are drawn as perplexity, without the held-out accuracies (another scale).
    accuracy = summary.get("score_probe", "task_accuracy") == "task_accuracy"
    scale = 100 if accuracy else -1
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if candidates:
        ax.scatter(
            [c.round for c in candidates],
            [scale * c.score for c in candidates],
            s=10,
            color="0.75",
            label="candidates",
            zorder=1,
        )
    xs = [obs.get("n_dropped", i) for i, obs in enumerate(trajectory)]
    ys = [scale * obs["score"] for obs in trajectory]
    ax.plot(xs, ys, "-o", color="tab:blue", ms=4, label="accepted (optimization)", zorder=3)
    if accuracy:  # 95% Wilson intervals as a band around the accepted trajectory
        bounds = [accuracy_interval(opt_metrics(obs)) for obs in trajectory]
        if bounds and all(b is not None for b in bounds):
            ax.fill_between(
                xs, [100 * b[0] for b in bounds], [100 * b[1] for b in bounds],
                color="tab:blue", alpha=0.15, lw=0, label="95% interval (optimization)",
                zorder=2,
            )  # fmt: skip
    for i in range(1, len(trajectory)):
        removed = set(trajectory[i].get("drop_layers", [])) - set(
            trajectory[i - 1].get("drop_layers", [])
        )
        if len(removed) == 1:
            ax.annotate(
                f"−{removed.pop()}",
                (xs[i], ys[i]),
                textcoords="offset points",
                xytext=(-7, 7),  # up-left: Best/BSBA markers sit on the point itself
                ha="right",
                fontsize=7,
                color="tab:blue",
            )
    baseline = summary.get("baseline_accuracy")
    if baseline is not None:
        ax.axhline(scale * baseline, color="0.3", ls="--", lw=1, label="baseline")
    if summary.get("threshold") is not None:
        ax.axhline(scale * summary["threshold"], color="tab:red", ls=":", lw=1, label="threshold")
    marks = (("best", "Best", "*", "gold", 16), ("bsba", "BSBA", "D", "tab:green", 7))
    for key, label, marker, color, size in marks:
        pick = summary.get(key)
        if isinstance(pick, Mapping) and "score" in pick:
            ax.plot(
                pick.get("n_dropped", len(pick.get("drop_layers", []))),
                scale * pick["score"],
                marker=marker,
                color=color,
                ms=size,
                mec="black",
                ls="none",
                label=label,
                zorder=4,
            )
    for key, marker in (("baseline", "o"), ("best", "*"), ("bsba", "D")):
        pick = summary.get(key)
        acc = (
            (pick or {}).get("heldout", {}).get("accuracy") if isinstance(pick, Mapping) else None
        )
        if acc is not None and accuracy:
            interval = accuracy_interval(pick["heldout"])
            yerr = None
            if interval is not None:
                yerr = [[100 * (acc - interval[0])], [100 * (interval[1] - acc)]]
            # Held-out points sit a little right of their layer count, so their error bars
            # do not hide the optimization band.
            ax.errorbar(
                pick.get("n_dropped", 0) + 0.08,
                100 * acc,
                yerr=yerr,
                marker=marker,
                mfc="none",
                mec="tab:purple",
                ecolor="tab:purple",
                elinewidth=1,
                capsize=3,
                ms=9,
                ls="none",
                zorder=5,
                label="held-out (95% interval)" if key == "baseline" else None,
            )
    ax.set_xlabel("layers dropped (iteration); −ℓ: layer ℓ (0-based) removed at that step")
    ax.set_ylabel("accuracy %" if accuracy else f"perplexity ({summary.get('probe')} probe)")
    ax.set_title(_title(summary), fontsize=10)
    if xs:
        ax.set_xticks(range(0, max(xs + [c.round for c in candidates]) + 1))
    ax.margins(y=0.12)  # room for the layer labels above the top points
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save(fig, path)


def plot_heatmap(
    heatmap: Heatmap,
    path: str | Path,
    *,
    baseline: float | None = None,
    title: str = "",
) -> Path:
    """Round × layer heatmap of candidate scores (%); accepted cells boxed, pruned hatched.

    Colours diverge around the baseline accuracy when given (blue above, red below), so a
    removal that helps stands out; layers removed in an earlier round are blank.
    """
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    plt = pyplot()
    data = np.array(
        [[np.nan if v is None else 100 * v for v in row] for row in heatmap.values], dtype=float
    ).reshape(len(heatmap.rounds), heatmap.num_layers)
    width = min(16.0, max(7.0, 2.0 + 0.32 * heatmap.num_layers))  # 7: the title note fits
    fig, ax = plt.subplots(figsize=(width, 1.4 + 0.38 * max(1, len(heatmap.rounds))), dpi=120)
    finite = data[np.isfinite(data)]
    norm, cmap = None, plt.get_cmap("viridis")
    if finite.size and baseline is not None:
        lo, hi, center = finite.min(), finite.max(), 100 * baseline
        if lo < center < hi:
            norm, cmap = TwoSlopeNorm(center, lo, hi), plt.get_cmap("RdBu")
    cmap = cmap.with_extremes(bad="0.92")  # cells of layers removed earlier
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, norm=norm)
    fig.colorbar(image, ax=ax, pad=0.01, label="score %")
    small = heatmap.num_layers <= 40
    for i, r in enumerate(heatmap.rounds):
        for layer in range(heatmap.num_layers):
            value = data[i, layer]
            if np.isnan(value):
                continue
            if heatmap.pruned[i][layer]:
                ax.add_patch(
                    Rectangle(
                        (layer - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", lw=0, color="0.4"
                    )
                )
            if small:
                red, green, blue, _ = cmap(image.norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived luminance
                ax.text(
                    layer,
                    i,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if dark else "black",
                )
        if r in heatmap.chosen:
            ax.add_patch(
                Rectangle((heatmap.chosen[r] - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black")
            )
    ax.set_yticks(range(len(heatmap.rounds)), [str(r) for r in heatmap.rounds])
    step = 1 if heatmap.num_layers <= 40 else 2
    ax.set_xticks(range(0, heatmap.num_layers, step))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("layer removed (0-based)")
    ax.set_ylabel("round")
    note = "boxed: accepted · hatched: stopped early (upper bound) · blank: already removed"
    ax.set_title(f"{title}\n{note}" if title else note, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def write_search_plots(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Trajectory and heatmap PNGs of a finished run directory (summary.json + CSV).

    Returns the files written (the heatmap is skipped when no candidate fits a greedy round).
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    csv_path = run_dir / "candidate_results.csv"
    probe = summary.get("score_probe", "task_accuracy")
    candidates = read_candidates(csv_path, probe) if csv_path.is_file() else []
    written = [plot_trajectory(summary, out / TRAJECTORY_PNG, candidates)]
    if probe != "task_accuracy":
        return written  # the heatmap's colour scale is centred on a baseline accuracy
    trajectory = [obs.get("drop_layers", []) for obs in summary.get("trajectory") or []]
    heatmap = heatmap_matrix(candidates, int(summary["num_layers"]), trajectory or None)
    if heatmap.rounds:
        written.append(
            plot_heatmap(
                heatmap,
                out / HEATMAP_PNG,
                baseline=summary.get("baseline_accuracy"),
                title=_title(summary),
            )
        )
    return written
