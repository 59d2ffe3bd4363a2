"""The transfer PNG: a tasks × configurations heatmap of accuracy deltas against the Baseline.

Blue is better than the full model, red worse, white no change; the colour scale is symmetric
around zero. Each cell carries the delta in points and the paired test's p-value; a significant
cell is starred, and the cells of each configuration's own task are outlined.
"""

from __future__ import annotations

from pathlib import Path

from tale_opt.evaluate.transfer import TransferMatrix
from tale_opt.reporting._mpl import pyplot, save
from tale_opt.stats import format_p


def plot_transfer(matrix: TransferMatrix, path: str | Path) -> Path:
    """Save the heatmap of `matrix` as a PNG at `path`."""
    import numpy as np

    plt = pyplot()
    rows, cols = len(matrix.tasks), len(matrix.labels)
    data = np.full((rows, cols), np.nan)
    for i, task in enumerate(matrix.tasks):
        for j, label in enumerate(matrix.labels):
            cell = matrix.cell(task, label)
            if cell is not None:
                data[i, j] = 100 * cell.delta
    finite = data[np.isfinite(data)]
    bound = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    fig, ax = plt.subplots(
        figsize=(min(20.0, 3.0 + 1.6 * cols), min(14.0, 1.8 + 0.7 * rows)),
        dpi=120,
        layout="constrained",
    )
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")  # grey: not scored
    image = ax.imshow(data, cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
    for i, task in enumerate(matrix.tasks):
        for j, label in enumerate(matrix.labels):
            cell = matrix.cell(task, label)
            if cell is None:
                ax.text(j, i, "—", ha="center", va="center", fontsize=8)
                continue
            value = 100 * cell.delta
            text = f"{value:+.1f}{'*' if cell.significant else ''}\n{format_p(cell.p_value)}"
            dark = abs(value) > 0.6 * bound
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
            if cell.own:
                # Inset, so that neighbouring cells' frames do not merge into a grid.
                frame = plt.Rectangle((j - 0.45, i - 0.42), 0.9, 0.84, fill=False, linewidth=2.0)
                ax.add_patch(frame)
    ax.set_xticks(range(cols), matrix.labels, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(
        range(rows), [f"{t}\n(n={matrix.n_examples[t]})" for t in matrix.tasks], fontsize=8
    )
    ax.set_xlabel("configuration (outlined: the task its layers were chosen on)")
    ax.set_title(
        f"{matrix.split} accuracy − Baseline, points (* exact McNemar p < {matrix.alpha})",
        fontsize=10,
    )
    fig.colorbar(image, ax=ax, label="accuracy change vs Baseline (points)")
    return save(fig, path)
