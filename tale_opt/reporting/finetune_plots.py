"""Plots of fine-tuning: one fine-tune's loss curve, and the TALE × fine-tuning table (held-out
accuracy against layers dropped, one point per stage, with 95% intervals)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.reporting._mpl import pyplot, save


def plot_loss_curve(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Training loss (left axis) and learning rate (right axis) against the optimizer step."""
    plt = pyplot()
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(steps, [h["loss"] for h in history], marker="o", ms=3, color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)", color="tab:blue")
    lr = ax.twinx()
    lr.plot(steps, [h.get("learning_rate", 0.0) for h in history], color="tab:orange", lw=1)
    lr.set_ylabel("learning rate", color="tab:orange")
    ax.set_title("LoRA fine-tuning")
    return save(fig, path)


def plot_stage_table(rows: Sequence[Mapping[str, Any]], path: str | Path, *,
                     chance: float | None = None, title: str = "") -> Path:  # fmt: skip
    """Held-out accuracy (95% interval as error bars) against layers dropped, one labelled
    point per stage; a dashed line at the Baseline and a dotted one at chance."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    baseline = None
    for i, row in enumerate(rows):
        acc = row.get("accuracy")
        if acc is None:
            continue
        low, high = row.get("ci_low", acc), row.get("ci_high", acc)
        # Stages side by side around their layer count, so equal counts do not overlap.
        x = row["n_dropped"] + 0.06 * (i - (len(rows) - 1) / 2)
        ax.errorbar(
            [x], [100 * acc], yerr=[[100 * (acc - low)], [100 * (high - acc)]],
            fmt="o", capsize=4, color=f"C{i}", label=row["stage"],
        )  # fmt: skip
        if row.get("is_baseline"):
            baseline = acc
    if baseline is not None:
        ax.axhline(100 * baseline, ls="--", color="grey", lw=1)
    if chance is not None:
        ax.axhline(100 * chance, ls=":", color="black", lw=1, label="chance")
    counts = sorted({row["n_dropped"] for row in rows})
    ax.set_xticks(counts)
    ax.set_xlabel("decoder layers dropped")
    ax.set_ylabel("held-out accuracy % (95% CI)")
    ax.set_title(title or "TALE and fine-tuning")
    ax.legend(fontsize=7, loc="lower left", ncols=2)
    return save(fig, path)
