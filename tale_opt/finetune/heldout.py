"""Held-out accuracy of a fine-tune's starting model and of the merged result.

Both are scored with the search's own evaluator settings on the search's held-out split, so
the numbers compare with the search's summary; the result is compared with the starting model
on the same questions by the exact McNemar test, and each comes with its 95% interval and its
analytic TFLOPs per example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt import stats
from tale_opt.pipeline.candidates import build_evaluator, prediction_rows
from tale_opt.pipeline.significance import heldout_record
from tale_opt.types import DropSet


class HeldoutScorer:
    """Scores models on one held-out split with one set of evaluator options.

    Args:
        eval_config: ``{"eval": {...}}`` as a search stores it (scoring, batch size, ...).
        task: The task.
        examples: The held-out split.
    """

    def __init__(self, eval_config: Mapping[str, Any], task: Any, examples: Sequence[Any]):
        self.config = {"eval": dict(eval_config)}
        self.task = task
        self.examples = tuple(examples)

    def score(self, model: Any, tokenizer: Any, drop: DropSet | None = None) -> tuple[Any, float]:
        """(EvalResult, TFLOPs per example) of `model` without `drop` on the held-out split."""
        drop = drop if drop is not None else DropSet()
        from tale_opt.cost.workload import evaluation_flops

        evaluator = build_evaluator(self.config, model, tokenizer, self.task)
        prepared = evaluator.prepare(self.examples)
        flops = evaluation_flops(
            model.config, drop, prepared, max_new_tokens=evaluator.max_new_tokens
        )
        result = evaluator.evaluate(prepared, drop, progress="held-out")
        return result, flops.tflops / len(self.examples)

    def record(self, result: Any, tflops: float) -> dict[str, Any]:
        """Accuracy with its interval, answer profile and TFLOPs per example."""
        record = heldout_record(self.task, result, self.examples, None)
        record["tflops_per_example"] = tflops
        return record


def paired_by_id(
    rows: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The exact McNemar test of two prediction files on the examples both scored (by id):
    ``only_pick`` counts the examples only `rows` gets right, ``only_baseline`` those only
    `reference` gets right.

    Raises:
        ValueError: The two share no example.
    """
    theirs = {str(r["id"]): bool(r["correct"]) for r in reference}
    ids = [str(r["id"]) for r in rows if str(r["id"]) in theirs]
    mine = {str(r["id"]): bool(r["correct"]) for r in rows}
    if not ids:
        raise ValueError("the two prediction files share no example")
    return stats.paired_comparison([mine[i] for i in ids], [theirs[i] for i in ids]).as_dict()


# The order a search evaluates its picks in: a pick whose drop set an earlier pick has is not
# evaluated again, and its predictions are in that earlier pick's file.
SEARCH_PICKS = ("baseline", "best", "bsba", "ae_hm", "final")


def search_predictions_file(run_dir: Path, summary: Mapping[str, Any], pick: str) -> Path | None:
    """The held-out predictions of a search's `pick`: its own file, else the file of the
    first pick with the same drop set (written once per distinct configuration)."""
    drop = (summary.get(pick) or {}).get("drop_layers")
    for name in (pick, *SEARCH_PICKS):
        path = run_dir / "predictions" / f"heldout_{name}.jsonl"
        same = (summary.get(name) or {}).get("drop_layers") == drop
        if same and path.is_file():
            return path
    return None


def predictions(result: Any) -> list[dict[str, Any]]:
    """Per-example rows for `predictions/*.jsonl` (the same shape a search writes)."""
    return prediction_rows(result)
