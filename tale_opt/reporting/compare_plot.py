"""The comparison PNG: held-out accuracy vs layers dropped, and optimization trajectories.

One series per group of settings (all but the seed): its own colour *and* marker, so two
series that land on the same points still show both, and series are nudged apart along the
x axis. Left: each search's Baseline, Best, BSBA, AE-HM and Final on the held-out split,
joined in order of layers dropped (Best drawn larger). Right: the accepted trajectory on the
optimization split. The legend sits outside both panels, where it covers no point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tale_opt.reporting._mpl import pyplot
from tale_opt.reporting.compare import Comparison, series_labels

_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h", "*", "p")
_PICKS = ("baseline", "best", "bsba", "ae_hm", "final")


def series_styles(n: int) -> list[tuple[Any, str]]:
    """`n` distinct (colour, marker) pairs: colours from tab10 (tab20 beyond ten), markers
    in a cycle of another length, so no two series share both up to 120 series."""
    plt = pyplot()
    palette = plt.get_cmap("tab10" if n <= 10 else "tab20")
    size = 10 if n <= 10 else 20
    return [(palette(i % size), _MARKERS[i % len(_MARKERS)]) for i in range(n)]


def draw_comparison(comparison: Comparison) -> Any:
    """The figure of `comparison` (not saved)."""
    plt = pyplot()
    groups = comparison.groups
    labels = series_labels(groups)
    styles = series_styles(len(groups))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120)
    width = 0.3  # of the x range the series are spread over, around each integer
    for i, (group, (color, marker)) in enumerate(zip(groups, styles, strict=True)):
        nudge = 0.0 if len(groups) == 1 else width * (i / (len(groups) - 1) - 0.5)
        for member in group.members:
            points = sorted(
                (p.n_dropped + nudge, 100 * p.heldout_accuracy, name)
                for name, p in member.picks.items()
                if name in _PICKS and p.n_dropped is not None and p.heldout_accuracy is not None
            )
            if points:
                left.plot([x for x, _, _ in points], [y for _, y, _ in points],
                          color=color, lw=1, alpha=0.8)  # fmt: skip
                for x, y, name in points:
                    left.plot(x, y, marker=marker, color=color, mec="black", mew=0.5,
                              ms=10 if name == "best" else 6, ls="none")  # fmt: skip
            if member.trajectory:
                right.plot(
                    [x + nudge for x, _ in member.trajectory],
                    [100 * y for _, y in member.trajectory],
                    color=color, marker=marker, ms=5, mec="black", mew=0.5, lw=1,
                )  # fmt: skip
    handles = [
        plt.Line2D([], [], color=c, marker=m, mec="black", mew=0.5, lw=1, label=label)
        for (c, m), label in zip(styles, labels, strict=True)
    ]
    left.set_title("held-out accuracy of the reported configurations", fontsize=10)
    left.set_xlabel("layers dropped (Best: large marker)")
    left.set_ylabel("held-out accuracy %")
    right.set_title("accepted trajectory (optimization split)", fontsize=10)
    right.set_xlabel("layers dropped")
    right.set_ylabel("optimization accuracy %")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{len(comparison.shown)} searches in {len(groups)} series", fontsize=10)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title="series (settings but the seed)", title_fontsize=8)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Draw `comparison` and save it as a PNG at `path` (the legend included)."""
    fig = draw_comparison(comparison)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    pyplot().close(fig)
    return path
