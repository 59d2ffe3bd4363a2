"""Cross-task transfer: how each configuration's accuracy on every task differs from the
Baseline's on the same examples (pure data and markdown; the heatmap is in
`tale_opt.reporting.transfer_plot`).

A pick chosen on one task is scored on the held-out split of every task; the cell (task,
configuration) is its accuracy minus the Baseline's, in percentage points, with the exact
McNemar test of the two on those examples. Cells where the configuration was chosen on the
task itself ("own") are the searches' own held-out results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tale_opt.evaluate.plan import BASELINE
from tale_opt.stats import accuracy_interval, format_accuracy, format_p


@dataclass(frozen=True)
class TransferCell:
    """One configuration on one task against the Baseline."""

    delta: float  # accuracy − Baseline accuracy, in [-1, 1]
    accuracy: float
    p_value: float
    verdict: str
    significant: bool
    own: bool  # the configuration's layers were chosen on this task


@dataclass(frozen=True)
class TransferMatrix:
    """Tasks (rows) × configurations (columns) of held-out accuracy deltas."""

    tasks: tuple[str, ...]
    labels: tuple[str, ...]
    baseline: dict[str, Mapping[str, Any]]  # task -> the Baseline's metrics
    n_examples: dict[str, int]
    cells: dict[tuple[str, str], TransferCell]
    split: str = "held-out"
    alpha: float = 0.05

    def cell(self, task: str, label: str) -> TransferCell | None:
        return self.cells.get((task, label))


def transfer_matrix(record: Mapping[str, Any]) -> TransferMatrix | None:
    """The matrix of an evaluation.json record; None when nothing was tested against a
    Baseline (no drop set, or ``baseline=false``)."""
    tasks, labels, baseline, sizes = [], [], {}, {}
    cells: dict[tuple[str, str], TransferCell] = {}
    for entry in record.get("tasks", []):
        rows = {row["label"]: row for row in entry["configurations"]}
        if BASELINE not in rows:
            continue
        name = entry["task"]
        tasks.append(name)
        baseline[name] = rows[BASELINE]
        sizes[name] = int(entry["n_examples"])
        for label, row in rows.items():
            vs = row.get("vs_baseline")
            if not vs:
                continue
            if label not in labels:
                labels.append(label)
            cells[(name, label)] = TransferCell(
                delta=float(row["accuracy"]) - float(rows[BASELINE]["accuracy"]),
                accuracy=float(row["accuracy"]),
                p_value=float(vs["p_value"]),
                verdict=str(vs["verdict"]),
                significant=float(vs["p_value"]) < float(vs["alpha"]),
                own=row.get("source_task") == name,
            )
    if not cells:
        return None
    return TransferMatrix(
        tuple(tasks), tuple(labels), baseline, sizes, cells,
        split=str(record.get("split", "held-out")), alpha=float(record.get("alpha", 0.05)),
    )  # fmt: skip


def format_cell(cell: TransferCell | None) -> str:
    """``−4.0 (p = 0.50)``; ``+8.0* (p = 0.012)`` when significant; ``[own]`` on the task the
    layers were chosen on."""
    if cell is None:
        return "—"
    sign = "+" if cell.delta >= 0 else "−"
    star = "*" if cell.significant else ""
    own = " [own]" if cell.own else ""
    return f"{sign}{abs(100 * cell.delta):.1f}{star} ({format_p(cell.p_value)}){own}"


def format_transfer(matrix: TransferMatrix) -> str:
    """The matrix as markdown: one row per task, the Baseline's accuracy, then one column per
    configuration."""
    head = (
        f"{matrix.split} accuracy of each configuration minus the Baseline's on the same "
        f"examples, in points (exact McNemar p; * significant at α = {matrix.alpha}; [own]: "
        "the task its layers were chosen on)"
    )
    lines = [
        "| task | n | Baseline % [95% CI] | " + " | ".join(matrix.labels) + " |",
        "|---|---:|---:|" + "---:|" * len(matrix.labels),
    ]
    for task in matrix.tasks:
        base = matrix.baseline[task]
        accuracy = format_accuracy(base.get("accuracy"), accuracy_interval(base))
        cells = " | ".join(format_cell(matrix.cell(task, label)) for label in matrix.labels)
        lines.append(f"| {task} | {matrix.n_examples[task]} | {accuracy} | {cells} |")
    return head + "\n" + "\n".join(lines)
