"""The files of a fine-tune's output directory, and its summary table.

finetune_job.json       what was asked (a resume must match it)
heldout_before.json     the starting model's held-out record
checkpoints/            the Trainer's resumable checkpoints
adapter/                the LoRA adapter (peft) and tokenizer
training.json           steps, losses, parameter counts
training_loss.csv/.png  the loss and learning rate per logged step
merged/                 the merged checkpoint (plain from_pretrained) + tale_opt_export.json
merge.json              the reload check's max |logit difference|
predictions/            heldout_before.jsonl, heldout_after.jsonl
finetune_summary.json/.md
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.credentials import mask_values
from tale_opt.pipeline.outputs import write_json_atomic, write_text_atomic
from tale_opt.stats import accuracy_interval, format_accuracy, format_p

SUMMARY_JSON = "finetune_summary.json"
SUMMARY_MD = "finetune_summary.md"
BEFORE_JSON = "heldout_before.json"
TRAINING_JSON = "training.json"
MERGE_JSON = "merge.json"
LOSS_CSV = "training_loss.csv"
LOSS_PNG = "training_loss.png"
ADAPTER = "adapter"
MERGED = "merged"
PREDICTIONS = "predictions"


def write_json(path: Path, payload: Any) -> None:
    write_json_atomic(path, payload)


def _predictions_path(out: Path, name: str) -> Path:
    return out / PREDICTIONS / f"{name}.jsonl"


def write_predictions(out: Path, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(dict(r), default=str) + "\n" for r in rows)
    write_text_atomic(_predictions_path(out, name), text)


def has_predictions(out: Path, name: str) -> bool:
    return _predictions_path(out, name).is_file()


def read_predictions(out: Path, name: str) -> list[dict[str, Any]]:
    lines = _predictions_path(out, name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write_loss_curve(out: Path, history: Sequence[Mapping[str, float]]) -> None:
    """training_loss.csv and training_loss.png (loss and learning rate against the step)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "epoch", "loss", "learning_rate"])
    writer.writeheader()
    for entry in history:
        writer.writerow({k: entry.get(k) for k in writer.fieldnames})
    write_text_atomic(out / LOSS_CSV, buffer.getvalue())
    if history:
        from tale_opt.reporting.finetune_plots import plot_loss_curve

        plot_loss_curve(history, out / LOSS_PNG)


def write_summary(out: Path, summary: Mapping[str, Any]) -> None:
    # It names the tracking URI: never with its password.
    write_json_atomic(out / SUMMARY_JSON, mask_values(dict(summary)))
    write_text_atomic(out / SUMMARY_MD, summary_markdown(summary) + "\n")


def _accuracy(record: Mapping[str, Any]) -> str:
    return format_accuracy(record.get("accuracy"), accuracy_interval(record), "")


def _versus(test: Mapping[str, Any] | None) -> str:
    if not test:
        return "—"
    p_text = format_p(float(test["p_value"]))
    return f"+{test['only_pick']}/−{test['only_baseline']}, {p_text} ({test['verdict']})"


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The printed summary: starting model and fine-tuned model on the held-out split."""
    held, training = summary["heldout"], summary["training"]
    dropped = ",".join(str(i) for i in summary["dropped_layers"]) or "—"
    chance = held.get("chance_accuracy")
    lines = [
        f"fine-tune — model {summary['model']} · task {summary['task']} · layers dropped "
        f"(0-based, original numbering) {dropped} · {summary['num_layers']} of "
        f"{summary['original_num_layers']} layers",
        f"training: {training['n_sequences']} examples disjoint from the search's splits, "
        f"{training['steps']} steps, loss {training['first_loss']:.3f} → "
        f"{training['final_loss']:.3f}, {training['trainable_parameters']:,} LoRA parameters",
        "| model | layers | held-out acc % [95% CI] | vs start (held-out) | TFLOPs / example |",
        "|---|---:|---:|---|---:|",
        f"| start | {summary['num_layers']} | {_accuracy(held['before'])} | — "
        f"| {held['before']['tflops_per_example']:.4g} |",
        f"| fine-tuned | {summary['num_layers']} | {_accuracy(held['after'])} "
        f"| {_versus(held['after'].get('vs_start'))} "
        f"| {held['after']['tflops_per_example']:.4g} |",
        f"held-out split: {held['n']} examples, never trained on · chance "
        f"{'-' if chance is None else f'{100 * chance:.1f}%'} · vs start: examples only the "
        "fine-tuned / only the starting model gets right, exact McNemar test, α = 0.05",
        f"merged checkpoint: {summary['merged']} (reloaded with from_pretrained: max |logit "
        f"difference| {summary['max_logit_diff']:.2e}) · adapter: {summary['adapter']}",
    ]
    return "\n".join(lines)
