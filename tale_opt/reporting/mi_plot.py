"""The MI figure: estimated I(layer output; answer) across layers, full model and pick.

One panel per estimator (MINE, linear-probe bound): a line per configuration at the original
layer numbers, a band of ± one standard deviation over the seeds, grey columns at the layers
the pick drops, and H(Y), the most any layer can hold, as a dotted line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tale_opt.reporting._mpl import pyplot, save

ESTIMATORS = (("mine", "MINE (Donsker-Varadhan)"), ("probe", "linear probe: H(Y) − CE"))
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
MARKERS = ("o", "s", "^", "D")


def plot_mi(record: Mapping[str, Any], path: str | Path) -> Path:
    """Save the figure of an `analyze mi` record (mi.json's content) as a PNG at `path`."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.2), dpi=120, sharey=True,
                             layout="constrained")  # fmt: skip
    dropped = sorted({i for c in record["configurations"] for i in c["drop_layers"]})
    for ax, (key, title) in zip(axes, ESTIMATORS, strict=True):
        for layer in dropped:
            ax.axvspan(layer - 0.5, layer + 0.5, color="0.85", zorder=0)
        for n, config in enumerate(record["configurations"]):
            _line(ax, config, key, COLOURS[n % len(COLOURS)], MARKERS[n % len(MARKERS)])
        ax.axhline(record["label_entropy_bits"], color="0.3", ls=":", lw=1, label="H(Y)")
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("decoder layer (0-based; output at the last token)")
        ax.set_xlim(-0.7, record["num_layers"] - 0.3)
    axes[0].set_ylabel("estimated I(layer output; Y), bits")
    handles, labels = axes[0].get_legend_handles_labels()
    if dropped:
        handles.append(plt.Rectangle((0, 0), 1, 1, color="0.85"))
        labels.append(f"dropped: {','.join(str(i) for i in dropped)}")
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    seeds = record["settings"]["seeds"]
    fig.suptitle(
        f"{record['model']} · {record['task']} ({record['scoring']}, target {record['target']}) · "
        f"{record['n_questions']} questions · mean ± sd over {seeds} seeds, on held-out "
        "questions",
        fontsize=10,
    )
    return save(fig, path)


def _line(ax: Any, config: Mapping[str, Any], key: str, colour: str, marker: str) -> None:
    layers = [row["layer"] for row in config["layers"]]
    means = [row[key]["mean"] for row in config["layers"]]
    sds = [row[key]["sd"] for row in config["layers"]]
    low = [m - s for m, s in zip(means, sds, strict=True)]
    high = [m + s for m, s in zip(means, sds, strict=True)]
    ax.plot(layers, means, color=colour, marker=marker, ms=3.5, lw=1.2, label=config["label"])
    ax.fill_between(layers, low, high, color=colour, alpha=0.2, lw=0)
