"""One table from the stages' summaries: layers dropped (in the original model's numbering),
held-out accuracy with its 95% interval, the paired test against the Baseline on the same
held-out questions, and TFLOPs per held-out example; plus a plot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tale_opt.finetune import outputs as ft_outputs
from tale_opt.finetune.heldout import paired_by_id, search_predictions_file
from tale_opt.finetune.lineage import Lineage
from tale_opt.pipeline.outputs import heldout_tflops, write_json_atomic, write_text_atomic
from tale_opt.stats import format_accuracy, format_p
from tale_opt.types import DropSet

TABLE_MD = "table.md"
TABLE_JSON = "table.json"
TABLE_PNG = "table.png"
LABELS = {
    "baseline": "Baseline",
    "tale": "TALE only",
    "ft": "FT only",
    "tale_ft": "TALE → FT",
    "ft_tale": "FT → TALE",
    "tale_ft_tale": "TALE → FT → TALE",
}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _search_row(stage: str, summary: Mapping[str, Any], pick: str, out: Path,
                lineage: Lineage) -> dict[str, Any]:  # fmt: skip
    entry = summary[pick]
    held = entry["heldout"]
    drop = lineage.then_drop(DropSet.of(entry["drop_layers"]))
    return {
        "stage": LABELS[stage],
        "key": stage,
        "dropped": list(drop.dropped.layers),
        "n_dropped": len(drop.dropped),
        "num_layers": len(drop.kept),
        "accuracy": held.get("accuracy"),
        "ci_low": held.get("accuracy_ci_low"),
        "ci_high": held.get("accuracy_ci_high"),
        "tflops_per_example": (heldout_tflops(entry) or 0.0) / max(1, summary["n_eval"]),
        "predictions": str(search_predictions_file(out, summary, pick)),
        "wall_s": (summary.get("timings") or {}).get("total_s"),
    }


def _finetune_row(stage: str, summary: Mapping[str, Any], out: Path) -> dict[str, Any]:
    after = summary["heldout"]["after"]
    return {
        "stage": LABELS[stage],
        "key": stage,
        "dropped": list(summary["dropped_layers"]),
        "n_dropped": len(summary["dropped_layers"]),
        "num_layers": summary["num_layers"],
        "accuracy": after.get("accuracy"),
        "ci_low": after.get("accuracy_ci_low"),
        "ci_high": after.get("accuracy_ci_high"),
        "tflops_per_example": after.get("tflops_per_example"),
        "predictions": str(out / ft_outputs.PREDICTIONS / "heldout_after.jsonl"),
        "wall_s": (summary.get("timings") or {}).get("total_s"),
    }


def build_rows(summaries: Mapping[str, Mapping[str, Any]], pick: str,
               out_dir: Path) -> list[dict[str, Any]]:  # fmt: skip
    """The table's rows, Baseline first, each with its paired test against the Baseline."""
    tale = summaries["tale"]
    original = Lineage(tale["num_layers"], tuple(range(tale["num_layers"])))
    tale_ft = summaries["tale_ft"]
    after_tale_ft = Lineage(tale_ft["original_num_layers"], _kept(tale_ft))
    rows = [
        {**_search_row("tale", tale, "baseline", out_dir / "tale", original), "stage": "Baseline",
         "key": "baseline", "is_baseline": True},
        _search_row("tale", tale, pick, out_dir / "tale", original),
        _finetune_row("ft", summaries["ft"], out_dir / "ft"),
        _finetune_row("tale_ft", tale_ft, out_dir / "tale_ft"),
        _search_row("ft_tale", summaries["ft_tale"], pick, out_dir / "ft_tale", original),
        _search_row("tale_ft_tale", summaries["tale_ft_tale"], pick, out_dir / "tale_ft_tale",
                    after_tale_ft),
    ]  # fmt: skip
    reference = _read_rows(Path(rows[0]["predictions"]))
    for row in rows[1:]:
        row["vs_baseline"] = paired_by_id(_read_rows(Path(row["predictions"])), reference)
    return rows


def _kept(finetune_summary: Mapping[str, Any]) -> tuple[int, ...]:
    dropped = set(finetune_summary["dropped_layers"])
    return tuple(i for i in range(finetune_summary["original_num_layers"]) if i not in dropped)


def _versus(test: Mapping[str, Any] | None) -> str:
    if not test:
        return "—"
    p = format_p(float(test["p_value"]))
    return f"+{test['only_pick']}/−{test['only_baseline']}, {p}, {test['verdict']}"


def table_markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "| stage | layers dropped (0-based, original numbering) | layers "
        "| held-out acc % [95% CI] | vs Baseline (held-out) | TFLOPs / example |",
        "|---|---|---:|---:|---|---:|",
    ]
    for row in rows:
        interval = (row["ci_low"], row["ci_high"]) if row.get("ci_low") is not None else None
        dropped = ",".join(str(i) for i in row["dropped"]) or "—"
        lines.append(
            f"| {row['stage']} | {dropped} | {row['num_layers']} "
            f"| {format_accuracy(row['accuracy'], interval)} | {_versus(row.get('vs_baseline'))} "
            f"| {row['tflops_per_example']:.4g} |"
        )
    return "\n".join(lines)


def write_table(summaries: Mapping[str, Mapping[str, Any]], pick: str, out_dir: Path,
                settings: Mapping[str, Any]) -> str:  # fmt: skip
    """Write table.md, table.json and table.png into `out_dir`; returns the markdown."""
    from tale_opt.reporting.finetune_plots import plot_stage_table

    rows = build_rows(summaries, pick, out_dir)
    tale = summaries["tale"]
    chance = (tale.get("chance_accuracy") or {}).get("heldout")
    training = summaries["ft"]["training"]
    header = (
        f"TALE × fine-tuning — model {tale['model']} · task {tale['task']} · scoring "
        f"{tale['scoring']} · seed {tale['seed']} · TALE pick: {pick} · held-out "
        f"{tale['n_eval']} examples (chance {'-' if chance is None else f'{100 * chance:.1f}%'})"
        f"\nLoRA r={settings['rank']}, {training['steps']} steps of {settings['batch_size']} on "
        f"{training['n_sequences']} training examples disjoint from every split · vs Baseline: "
        "held-out examples only this row / only the Baseline gets right, exact McNemar, α = 0.05"
    )
    text = table_markdown(rows, header)
    write_text_atomic(out_dir / TABLE_MD, text + "\n")
    write_json_atomic(out_dir / TABLE_JSON, {"pick": pick, "rows": rows, "settings": settings})
    plot_stage_table(rows, out_dir / TABLE_PNG, chance=chance,
                     title=f"{tale['model']} · {tale['task']}")  # fmt: skip
    return text
