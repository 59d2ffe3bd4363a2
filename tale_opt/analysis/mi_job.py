"""One `analyze mi` job: load the model once, collect the layer outputs of the full model and of
the pick, estimate per layer, and hand back one JSON-friendly record (`mi_files` writes it).

Which examples: the held-out part of a search with the same task, seed and ``n_opt`` (its first
``n_examples`` questions), so with ``run=`` the analysis never reads a question the search chose
its layers on. Prompts are rendered and tokenized as the evaluator does for the task's scoring
mode (chat template or plain text, few-shot demonstrations, the option texts for ``loglik``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tale_opt.analysis.mi import MiSettings, build_pairs, layer_estimates, resolve_target
from tale_opt.errors import UsageError
from tale_opt.types import DropSet

log = logging.getLogger("tale_opt")


@dataclass
class MiPlan:
    """Everything an `analyze mi` job needs, checked, before any weights are loaded."""

    model: dict[str, Any]  # `ModelSpec` fields
    model_name: str
    task: dict[str, Any]  # the task config
    eval: dict[str, Any]  # scoring options
    seed: int
    n_opt: int | None
    n_examples: int
    settings: MiSettings
    out_dir: Path
    fresh: bool  # out_dir is a prefix for a fresh directory (no out= given)
    drop: DropSet = field(default_factory=DropSet)  # the second model's layers (empty: none)
    drop_label: str = ""
    run: str | None = None


def run_mi(plan: MiPlan) -> dict[str, Any]:
    """Run `plan`; returns the record mi.json holds.

    Raises:
        UsageError: Bad data or a drop set out of range for the model.
    """
    from tale_opt.evaluation.evaluator import Evaluator
    from tale_opt.evaluation.representations import last_token_states
    from tale_opt.model.loading import ModelSpec, load_model
    from tale_opt.model.surgery import num_decoder_layers
    from tale_opt.tasks.registry import build_task, load_splits

    started = time.perf_counter()
    task = build_task(plan.task)
    splits = load_splits(plan.task, seed=plan.seed, n_opt=plan.n_opt, n_eval=plan.n_examples)
    model, tokenizer = load_model(ModelSpec(**plan.model))
    num_layers = num_decoder_layers(model)
    try:
        kept = plan.drop.kept(num_layers)
    except ValueError as err:
        raise UsageError(f"drop: {err}") from err
    evaluator = Evaluator(
        model, tokenizer, task,
        scoring=plan.eval.get("scoring", "letters"),
        batch_size=plan.eval.get("batch_size", 8),
        max_new_tokens=plan.eval.get("max_new_tokens", 1),
        shared_prefix=plan.eval.get("shared_prefix", True),
        chat_template=plan.eval.get("chat_template", True),
    )  # fmt: skip
    prepared = evaluator.prepare(splits.evaluation, split="analysis")
    target = resolve_target(plan.settings.target, evaluator.scoring)
    pairs = build_pairs(prepared, target)
    log.info(
        "%s on %s: %d questions (%d left out: not %d options), %d sequences (target %s), "
        "H(Y) = %.3f bits; %d decoder layers",
        plan.model_name, task.name, pairs.n_questions, pairs.left_out, pairs.options,
        len(pairs.sequences), target, pairs.entropy, num_layers,
    )  # fmt: skip
    models = [("full model", DropSet(), tuple(range(num_layers)))]
    if plan.drop:
        models.append((plan.drop_label or f"drop {plan.drop.key}", plan.drop, kept))
    configurations, timings = [], {}
    for label, drop, layers in models:
        begin = time.perf_counter()
        states = last_token_states(
            model, pairs.sequences, drop, prefix=pairs.prefix, pad_id=evaluator.pad_id,
            batch_size=evaluator.batch_size, device=evaluator.device,
        )  # fmt: skip
        collected = time.perf_counter()
        estimates = layer_estimates(states, pairs, plan.settings, label=f"{label}: ")
        timings[label] = {"states_s": round(collected - begin, 2),
                          "estimates_s": round(time.perf_counter() - collected, 2)}  # fmt: skip
        configurations.append({
            "label": label,
            "drop_layers": list(drop.layers),
            "layers": [{"layer": layer, **est} for layer, est in zip(layers, estimates,
                                                                      strict=True)],
        })  # fmt: skip
    return {
        "model": plan.model_name,
        "model_path": plan.model.get("path"),
        "num_layers": num_layers,
        "task": task.name,
        "scoring": evaluator.scoring,
        "fewshot": task.fewshot.k,
        "target": target,
        "seed": plan.seed,
        "examples": f"the held-out part of seed {plan.seed} (n_opt {plan.n_opt}): "
        f"{len(prepared)} questions",
        "splits_fingerprint": splits.fingerprint,
        "n_questions": pairs.n_questions,
        "left_out": pairs.left_out,  # choice: questions with another number of options
        "options": pairs.options,
        "n_sequences": len(pairs.sequences),
        "n_classes": pairs.n_classes,
        "label_entropy_bits": pairs.entropy,
        "units": "bits",
        "run": plan.run,
        "settings": plan.settings.as_dict(),
        "configurations": configurations,
        "timings": {**timings, "total_s": round(time.perf_counter() - started, 2)},
    }
