"""Result files and the printed table of an evaluation.

In the output directory: `evaluation.json` (settings, per task and configuration the accuracy
with its 95% interval and the paired test against the Baseline), `evaluation.md` (the printed
table), `predictions/<task>__<configuration>.jsonl` (one line per example, with per-choice
log-likelihoods in `loglik` mode) and, when configurations were tested against the Baseline,
`transfer.md` and `transfer.png` (tasks × configurations). Every file is written atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tale_opt.evaluate.plan import BASELINE, RECORD
from tale_opt.evaluate.run import Evaluation
from tale_opt.evaluate.transfer import format_transfer, transfer_matrix
from tale_opt.pipeline.outputs import write_json_atomic, write_text_atomic
from tale_opt.stats import accuracy_interval, format_accuracy, format_p

_UNSAFE = re.compile(r"[^\w.-]+")  # what may not appear in a file name


def predictions_name(task: str, label: str) -> str:
    """`predictions/` file name of a configuration on a task (``arc_easy__drop_3-7.jsonl``)."""
    slug = _UNSAFE.sub("_", label.replace(",", "-")).strip("_").lower() or "config"
    return f"{_UNSAFE.sub('_', task)}__{slug}.jsonl"


def write_evaluation(evaluation: Evaluation, out_dir: Path) -> tuple[Path, str]:
    """Write every result file into `out_dir`; returns the record's path and the printed
    text (the table, and the transfer matrix when there is one)."""
    out_dir = Path(out_dir)
    record = evaluation.record
    for entry in record["tasks"]:
        for row in entry["configurations"]:
            name = predictions_name(entry["task"], row["label"])
            rows = evaluation.predictions.get((entry["task"], row["label"]), [])
            text = "".join(json.dumps(dict(r), default=str) + "\n" for r in rows)
            write_text_atomic(out_dir / "predictions" / name, text)
            row["predictions"] = f"predictions/{name}"
    text = format_table(record)
    matrix = transfer_matrix(record)
    if matrix is not None:
        from tale_opt.reporting.transfer_plot import plot_transfer

        transfer = format_transfer(matrix)
        write_text_atomic(out_dir / "transfer.md", transfer + "\n")
        plot_transfer(matrix, out_dir / "transfer.png")
        record["transfer"] = {"markdown": "transfer.md", "heatmap": "transfer.png"}
        text += "\n\n" + transfer
    write_text_atomic(out_dir / "evaluation.md", text + "\n")
    path = out_dir / RECORD
    write_json_atomic(path, record)  # last: its presence marks a finished evaluation
    return path, text


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _scoring(entry: Mapping[str, Any]) -> str:
    shots = entry.get("fewshot") or 0
    return f"{entry['scoring']}, {shots}-shot"


def _versus(row: Mapping[str, Any]) -> tuple[str, str]:
    vs = row.get("vs_baseline")
    if not vs:
        return "—", "—"
    return f"+{vs['only_pick']}/−{vs['only_baseline']}, {format_p(vs['p_value'])}", vs["verdict"]


def _answers(row: Mapping[str, Any]) -> str:
    top, share = row.get("top_answer"), row.get("top_answer_share")
    return "-" if top is None or share is None else f"{top} {100 * share:.0f}%"


def format_table(record: Mapping[str, Any]) -> str:
    """One row per task and configuration: accuracy (and `acc_norm` in loglik mode) with its
    95% Wilson interval, the paired test against the Baseline, invalid outputs and the most
    frequent answer; below, each task's split and chance level, and any warning."""
    split = record["split"]
    head = f"tale evaluate — model {record['model']} · {split} split\n"
    lines = [
        "| task | config | layers dropped (0-based) | layers | n | scoring | acc % [95% CI] "
        "| acc_norm % | vs Baseline | verdict | invalid % | top answer |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---|---:|---|",
    ]
    foot = []
    for entry in record["tasks"]:
        for row in entry["configurations"]:
            dropped = ",".join(str(i) for i in row["drop_layers"]) or "—"
            versus, verdict = _versus(row)
            accuracy = format_accuracy(row.get("accuracy"), accuracy_interval(row))
            lines.append(
                f"| {entry['task']} | {row['label']} | {dropped} | {row['n_layers']} "
                f"| {entry['n_examples']} | {_scoring(entry)} | {accuracy} "
                f"| {_pct(row.get('accuracy_norm'))} | {versus} | {verdict} "
                f"| {_pct(row.get('invalid_rate'))} | {_answers(row)} |"
            )
        chance = entry.get("chance_accuracy")
        searched = " · never seen by the search" if entry.get("searched_by") else ""
        foot.append(
            f"{entry['task']}: {entry['n_examples']} {split} examples (seed {entry['seed']}; "
            f"the splits hold {entry['n_opt']} optimization / {entry['n_eval']} held-out)"
            f"{searched if split == 'held-out' else ''} · chance "
            f"{'-' if chance is None else f'{100 * chance:.1f}%'}"
        )
        foot += [f"WARNING: {entry['task']}: {w}" for w in entry.get("warnings") or []]
    has_tests = any(
        row["label"] != BASELINE and row.get("vs_baseline")
        for entry in record["tasks"]
        for row in entry["configurations"]
    )
    legend = "95% Wilson intervals"
    if has_tests:
        legend += (
            " · vs Baseline: examples only the configuration / only Baseline gets right, "
            f"exact McNemar test, α = {record.get('alpha', 0.05)}"
        )
    return head + "\n".join(lines) + "\n" + "\n".join([*foot, legend])
