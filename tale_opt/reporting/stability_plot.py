"""The stability PNG: per group of searches, a layers × n_opt heatmap of selection frequency.

A cell is the share of seeds whose Final drops that layer at that optimization-split size
(0 = no seed, 1 = every seed); a stable choice shows as a few dark cells that stay in the same
rows as n_opt grows. Cells a seed chose carry the count (e.g. 3/5) while the grid is small.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from tale_opt.reporting._mpl import pyplot, save
from tale_opt.reporting.stability import Group


def _title(group: Group, width: int) -> str:
    """The group's name, then its settings wrapped to about `width` characters."""
    settings = ", ".join(f"{k}={v}" for k, v in {**group.settings, **group.distinct}.items())
    return "\n".join([group.title, *textwrap.wrap(settings, width)])


def plot_stability(groups: Sequence[Group], path: str | Path) -> Path:
    """One heatmap panel per group, side by side, saved as a PNG at `path`."""
    import numpy as np

    plt = pyplot()
    layers = max(g.layers_shown for g in groups)
    widths = [2.6 + 0.9 * len(g.cells) for g in groups]
    height = min(14.0, max(3.2, 1.8 + 0.24 * layers))
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(min(24.0, sum(widths)), height),
        dpi=120,
        layout="constrained",
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    cmap = plt.get_cmap("Blues")
    image = None
    for ax, group, width in zip(axes[0], groups, widths, strict=True):
        data = np.array(group.frequency_matrix(), dtype=float).reshape(
            group.layers_shown, len(group.cells)
        )
        image = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, origin="lower")
        if data.size <= 600:
            for (layer, col), value in np.ndenumerate(data):
                if value <= 0:
                    continue
                seeds = len(group.cells[col].runs)
                ax.text(
                    col,
                    layer,
                    f"{round(value * seeds)}/{seeds}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value > 0.55 else "black",
                )
        labels = [
            f"{'?' if c.n_opt is None else c.n_opt}\n({len(c.runs)} seeds)" for c in group.cells
        ]
        ax.set_xticks(range(len(group.cells)), labels)
        step = 1 if group.layers_shown <= 40 else 2
        ax.set_yticks(range(0, group.layers_shown, step))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("n_opt (optimization examples)")
        ax.set_ylabel("layer (0-based)")
        ax.set_title(_title(group, int(11 * width)), fontsize=8)
    fig.colorbar(
        image,
        ax=axes[0].tolist(),
        pad=0.02,
        fraction=0.04,
        aspect=40,
        label="share of seeds dropping the layer",
    )
    fig.suptitle("Final drop sets across seeds: selection frequency", fontsize=10)
    return save(fig, path)
