"""One evaluation end to end: check, load, score every configuration on every task's split.

Every check that needs no weights runs first (drop sets against the model's layer count, each
task's config, data and splits, the optimization splits of the evaluated searches), then the
model is loaded once and each task is tokenized once; each distinct drop set is scored once per
task, with the same evaluator a search uses, so a search's pick scored here on its own held-out
split gives exactly the search's numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.evaluate.plan import (
    BASELINE,
    SPLITS,
    EvaluationPlan,
    SearchedSplit,
    TaskSetting,
    check_drop_sets,
)
from tale_opt.pipeline.candidates import build_evaluator, check_eval_options, prediction_rows
from tale_opt.pipeline.significance import chance_level, heldout_record, task_fewshot
from tale_opt.stats import ALPHA, CONFIDENCE, accuracy_interval, format_accuracy
from tale_opt.types import DropSet

log = logging.getLogger("tale_opt")


@dataclass
class Evaluation:
    """What an evaluation produced: the record (evaluation.json) and, per task and
    configuration label, the per-example prediction rows."""

    record: dict[str, Any]
    predictions: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class _LoadedTask:
    setting: TaskSetting
    task: Any
    splits: Any
    examples: Sequence[Any]


def run_evaluation(plan: EvaluationPlan) -> Evaluation:
    """Score `plan`'s configurations (and the Baseline) on each of its tasks.

    Raises:
        UsageError: A drop set that does not fit the model, a bad task or evaluator option,
            unreadable data, a search whose splits cannot be drawn again identically, or
            examples a search optimized on (unless `plan.allow_optimization_split`).
    """
    from tale_opt.model.loading import ModelSpec, load_model, model_skeleton
    from tale_opt.model.surgery import num_decoder_layers

    started = time.perf_counter()
    spec = ModelSpec(**plan.model)
    num_layers = num_decoder_layers(model_skeleton(spec))  # config only: no weights yet
    check_drop_sets(plan.configurations, num_layers)
    loaded = [_load_task(setting, plan) for setting in plan.tasks]
    model, tokenizer = load_model(spec)
    ready = time.perf_counter()
    evaluation = Evaluation(record={})
    records = [_score_task(plan, model, tokenizer, t, num_layers, evaluation) for t in loaded]
    finished = time.perf_counter()
    evaluation.record = {
        "model": plan.model_name,
        "model_path": plan.model.get("path"),
        "num_layers": num_layers,
        "split": SPLITS[plan.split],
        "baseline": plan.scores_baseline,
        "configurations": [conf.as_dict() for conf in plan.configurations],
        # 95% Wilson intervals on every accuracy; exact McNemar tests against the Baseline.
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "tasks": records,
        "timings": {
            "load_s": round(ready - started, 2),
            "evaluate_s": round(finished - ready, 2),
            "total_s": round(finished - started, 2),
        },
    }
    return evaluation


def _load_task(setting: TaskSetting, plan: EvaluationPlan) -> _LoadedTask:
    """The task, its splits and the examples to score; refuses a search's optimization split."""
    from tale_opt.tasks.registry import build_task, load_splits

    check_eval_options({"eval": setting.eval})
    task_cfg = dict(setting.task)
    splits = load_splits(task_cfg, seed=setting.seed, n_opt=setting.n_opt, n_eval=setting.n_eval)
    examples = splits.evaluation if plan.split == "heldout" else splits.optimization
    for searched in setting.searched:
        _check_unseen(searched, setting, examples, plan)
    return _LoadedTask(setting, build_task(task_cfg), splits, examples)


def _check_unseen(
    searched: SearchedSplit, setting: TaskSetting, examples: Sequence[Any], plan: EvaluationPlan
) -> None:
    """Refuse to score examples `searched` optimized on (by id or content), unless asked."""
    from tale_opt.tasks.registry import build_task, load_splits

    task = build_task(dict(searched.task))
    theirs = load_splits(
        dict(searched.task), seed=searched.seed, n_opt=searched.n_opt, n_eval=searched.n_eval
    )
    if searched.fingerprint and theirs.fingerprint != searched.fingerprint:
        raise UsageError(
            f"the {task.name} splits drawn here (fingerprint {theirs.fingerprint}) are not the "
            f"ones the search in {searched.run_dir} used ({searched.fingerprint}): this "
            "machine's data differs; install the same data packages/files"
        )
    if plan.allow_optimization_split:
        return
    ids = {e.id for e in theirs.optimization}
    contents = {task.content_key(e) for e in theirs.optimization}
    seen = sum(1 for e in examples if e.id in ids or task.content_key(e) in contents)
    if not seen:
        return
    if plan.split == "optimization":
        raise UsageError(
            f"split=optimization scores the {task.name} examples the search in "
            f"{searched.run_dir} chose its layers on, so its accuracy there is biased upwards; "
            "pass allow_optimization_split=true to score them anyway"
        )
    raise UsageError(
        f"{seen} of the {len(examples)} {task.name} examples to score are in the optimization "
        f"split of the search in {searched.run_dir} (seed {searched.seed}, n_opt "
        f"{searched.n_opt}), but this evaluation draws with seed {setting.seed}, n_opt "
        f"{setting.n_opt}; drop seed=/n_opt= to use the search's split, or pass "
        "allow_optimization_split=true"
    )


def _score_task(
    plan: EvaluationPlan,
    model: Any,
    tokenizer: Any,
    item: _LoadedTask,
    num_layers: int,
    evaluation: Evaluation,
) -> dict[str, Any]:
    """One task's entry of evaluation.json; its prediction rows go into `evaluation`."""
    setting, task = item.setting, item.task
    evaluator = build_evaluator({"eval": setting.eval}, model, tokenizer, task)
    prepared = evaluator.prepare(item.examples, split=SPLITS[plan.split])
    scored: dict[str, Any] = {}

    def score(drop: DropSet, label: str) -> Any:
        if drop.key not in scored:
            scored[drop.key] = evaluator.evaluate(prepared, drop, progress=f"{task.name} {label}")
        return scored[drop.key]

    rows: list[dict[str, Any]] = []
    baseline = None
    if plan.scores_baseline:
        baseline = score(DropSet(), BASELINE)
        rows.append(_row(task, BASELINE, DropSet(), num_layers, baseline, prepared, None))
        evaluation.predictions[(task.name, BASELINE)] = prediction_rows(baseline)
    for conf in plan.configurations:
        result = score(conf.drop, conf.label)
        row = _row(task, conf.label, conf.drop, num_layers, result, prepared, baseline)
        row.update({k: v for k, v in conf.as_dict().items() if k not in row})
        rows.append(row)
        evaluation.predictions[(task.name, conf.label)] = prediction_rows(result)
    chance = chance_level(task, item.examples)
    warnings = chance_warnings(SPLITS[plan.split], baseline, chance) if baseline else []
    return {
        "task": task.name,
        "scoring": evaluator.scoring,
        "fewshot": task_fewshot(task),
        "seed": setting.seed,
        "n_opt": len(item.splits.optimization),
        "n_eval": len(item.splits.evaluation),
        "n_examples": len(item.examples),
        "splits_fingerprint": item.splits.fingerprint,
        "prompt_version": task.prompt_version,
        "chance_accuracy": chance,
        "searched_by": [s.run_dir for s in setting.searched],
        "configurations": rows,
        "warnings": warnings,
    }


def _row(
    task: Any,
    label: str,
    drop: DropSet,
    num_layers: int,
    result: Any,
    prepared: Any,
    baseline: Any,
) -> dict[str, Any]:
    reference = baseline if drop else None  # the Baseline is not tested against itself
    record: Mapping[str, Any] = heldout_record(task, result, prepared.examples, reference)
    return {
        "label": label,
        "drop_layers": list(drop.layers),
        "n_layers": num_layers - len(drop),
        **record,
    }


def chance_warnings(split: str, baseline: Any, chance: float | None) -> list[str]:
    """A warning when the Baseline's interval reaches chance level: the model cannot be told
    apart from guessing here, so differences between configurations are luck."""
    metrics = baseline.metrics()
    interval = accuracy_interval(metrics)
    if chance is None or interval is None or interval[0] > chance:
        return []
    where = "contains" if interval[1] >= chance else "lies below"
    accuracy = format_accuracy(metrics.get("accuracy"), interval, "%")
    return [
        f"the Baseline's {split} accuracy {accuracy} {where} chance level "
        f"({100 * chance:.1f}%): the model cannot be told apart from guessing with this task, "
        "prompt and scoring, so differences between configurations are luck; try another "
        "scoring mode (eval.scoring=loglik), few-shot prompts (task.fewshot.k=5) or more "
        "examples (n_eval)"
    ]
