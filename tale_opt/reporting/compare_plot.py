"""The comparison PNG: held-out accuracy vs layers dropped, and optimization trajectories.

One colour per searcher (seeds of one searcher share it, so criteria are told apart at a
glance), one line style per model × task. Left: each search's Baseline, Best, BSBA and Final on the
held-out split, joined in order of layers dropped. Right: the accepted trajectory on the
optimization split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tale_opt.reporting._mpl import pyplot, save
from tale_opt.reporting.compare import SearchView

_STYLES = ("-", "--", ":", "-.")
_MARKERS = {"baseline": "o", "best": "*", "bsba": "D", "final": "s"}


def plot_comparison(views: Sequence[SearchView], path: str | Path) -> Path:
    """Draw the two panels for `views` and save them as a PNG at `path`."""
    plt = pyplot()
    searchers = sorted({v.searcher for v in views})
    targets = sorted({(v.model, v.task) for v in views})
    palette = plt.get_cmap("tab10")
    color = {s: palette(i % 10) for i, s in enumerate(searchers)}
    style = {t: _STYLES[i % len(_STYLES)] for i, t in enumerate(targets)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120)
    for v in views:
        c, ls = color[v.searcher], style[(v.model, v.task)]
        points = [
            (p.n_dropped, 100 * p.heldout_accuracy, name)
            for name, p in v.picks.items()
            if name in _MARKERS and p.n_dropped is not None and p.heldout_accuracy is not None
        ]
        points.sort()
        if points:
            left.plot([x for x, _, _ in points], [y for _, y, _ in points], ls=ls, color=c, lw=1)
            for x, y, name in points:
                left.plot(
                    x,
                    y,
                    marker=_MARKERS[name],
                    color=c,
                    mec="black",
                    mew=0.5,
                    ms=11 if name == "best" else 6,
                    ls="none",
                )
        if v.trajectory:
            right.plot(
                [x for x, _ in v.trajectory],
                [100 * y for _, y in v.trajectory],
                ls=ls,
                marker=".",
                color=c,
                lw=1,
            )
    handles = [plt.Line2D([], [], color=color[s], lw=2, label=s) for s in searchers]
    if len(targets) > 1:
        handles += [
            plt.Line2D([], [], color="0.3", ls=style[t], label=f"{t[0]} · {t[1]}") for t in targets
        ]
    handles += [
        plt.Line2D([], [], color="0.3", marker=m, ls="none", label=n)
        for n, m in (("Baseline", "o"), ("Best", "*"), ("BSBA", "D"), ("Final", "s"))
    ]
    left.set_title("held-out accuracy of the reported configurations", fontsize=10)
    left.set_xlabel("layers dropped")
    left.set_ylabel("held-out accuracy %")
    right.set_title("accepted trajectory (optimization split)", fontsize=10)
    right.set_xlabel("layers dropped")
    right.set_ylabel("optimization accuracy %")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    right.legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"{len(views)} searches: colour = searcher", fontsize=10)
    fig.tight_layout()
    return save(fig, path)
