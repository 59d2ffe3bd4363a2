"""What evaluating a search's candidates needs, rebuilt from a small JSON config.

The coordinator stores `study_config(cfg)` in the study; a worker on any machine reads it back
and builds a `CandidateEvaluator` from it alone (no Hydra config, no coordinator): the model is
loaded once, the optimization split prepared once, and both are reused for every trial of every
round. Before loading weights the worker checks that its model files and its splits are the
ones the study was fingerprinted with, so a machine with different data cannot mix results in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tale_opt.errors import UsageError, did_you_mean
from tale_opt.types import Candidate, DropSet, Observation

log = logging.getLogger("tale_opt")

MODEL_KEYS = ("path", "revision", "dtype", "device", "trust_remote_code", "attn_implementation")
EVAL_KEYS = ("scoring", "batch_size", "max_new_tokens")


def study_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved search config that evaluating a candidate depends on (JSON)."""
    model = dict(cfg["model"])
    return {
        "model": {k: model[k] for k in MODEL_KEYS if k in model},
        "model_name": model.get("name", model.get("path")),
        "task": dict(cfg["task"]),
        "eval": {k: v for k, v in dict(cfg["eval"]).items() if k in EVAL_KEYS},
        "seed": cfg["seed"],
        "n_opt": cfg.get("n_opt"),
        "n_eval": cfg.get("n_eval"),
        "searcher": cfg["searcher"].get("name"),
        "probe": cfg["searcher"].get("probe", "task_accuracy"),
    }


def search_fingerprint(
    config: Mapping[str, Any], model_identity: Mapping[str, Any], task: Any, splits: Any
) -> dict[str, Any]:
    """Everything that determines a candidate's score; a study is valid for one fingerprint.

    Stopping options (epsilon, max_drop) are not in it: they do not change any score, so runs
    that differ only there share a study and its evaluations.
    """
    return {
        "model": dict(model_identity),
        "task": task.name,
        "prompt_version": task.prompt_version,
        "splits": splits.fingerprint,
        "eval": dict(config["eval"]),
        "searcher": config["searcher"],
        "probe": config["probe"],
        "seed": config["seed"],
    }


def model_spec(
    config: Mapping[str, Any], device: str | None = None, path: str | None = None
) -> Any:
    """The `ModelSpec` of the search, optionally on another device or at another local path."""
    from tale_opt.model.loading import ModelSpec

    model = dict(config["model"])
    if device is not None:
        model["device"] = device
    if path is not None:
        model["path"] = path
    return ModelSpec(**model)


def load_task_and_splits(config: Mapping[str, Any]) -> tuple[Any, Any]:
    from tale_opt.tasks.registry import build_task, load_splits

    task_cfg = dict(config["task"])
    task = build_task(task_cfg)
    splits = load_splits(task_cfg, seed=config["seed"], n_opt=config["n_opt"],
                         n_eval=config["n_eval"])  # fmt: skip
    return task, splits


def check_eval_options(config: Mapping[str, Any]) -> None:
    """Refuse evaluation options the Evaluator would refuse, before any worker starts.

    A coordinator with `workers=N` builds no evaluator until the held-out step; without this
    check a typo would only surface as N workers exiting with the same error.
    """
    from tale_opt.evaluation.evaluator import SCORING_MODES

    eval_cfg = dict(config["eval"])
    scoring = eval_cfg.get("scoring", "letters")
    if scoring not in SCORING_MODES:
        hint = did_you_mean(str(scoring), SCORING_MODES)
        raise UsageError(f"unknown scoring mode {scoring!r}.{hint}")
    for key in ("batch_size", "max_new_tokens"):
        value = eval_cfg.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"`{key} >= 1` must hold, but got {key}={value!r}")


def build_evaluator(config: Mapping[str, Any], model: Any, tokenizer: Any, task: Any) -> Any:
    """The evaluator every process of one search uses (same options, so the same scores)."""
    from tale_opt.evaluation.evaluator import Evaluator

    eval_cfg = dict(config["eval"])
    return Evaluator(
        model,
        tokenizer,
        task,
        scoring=eval_cfg.get("scoring", "letters"),
        batch_size=eval_cfg.get("batch_size", 16),
        max_new_tokens=eval_cfg.get("max_new_tokens", 1),
    )


class CandidateEvaluator:
    """Scores candidates on the optimization split; callable as ``evaluate(candidate)``.

    Args:
        config: `study_config` of the search.
        expected: The study's fingerprint; the splits and model files are checked against it.
        device: Override the configured model device (e.g. ``cuda:1`` for this worker).
        model_path: The same checkpoint at another local path on this machine; its files must
            still match the study's (content hash), only the path may differ.
        task, splits: Already loaded by the caller (the coordinator); loaded here otherwise.
        progress: Show a progress bar per candidate.

    Raises:
        UsageError: The splits or model files differ from those the study was made with.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        expected: Mapping[str, Any] | None = None,
        device: str | None = None,
        model_path: str | None = None,
        task: Any = None,
        splits: Any = None,
        progress: bool = False,
    ) -> None:
        from tale_opt.model.loading import describe_model, load_model

        if task is None or splits is None:
            task, splits = load_task_and_splits(config)
        spec = model_spec(config, device, model_path)
        if expected is not None:
            if splits.fingerprint != expected.get("splits"):
                raise UsageError(
                    f"the {task.name} splits drawn here (fingerprint {splits.fingerprint}) are "
                    f"not the study's ({expected.get('splits')}); this machine's data differs "
                    "from the coordinator's: install the same data packages/files"
                )
            identity, wanted = describe_model(spec), dict(expected.get("model", {}))
            if model_path is not None:
                identity["path"] = wanted.get("path")  # moved, but the same files
            if identity != wanted:
                raise UsageError(
                    f"the model files of {spec.path!r} here ({identity}) are not the study's "
                    f"({wanted}); use the same checkpoint on every machine (model_path=DIR "
                    "if it lives at another path here)"
                )
        self.task, self.splits = task, splits
        log.info("loading model %s", spec.path)
        self.model, self.tokenizer = load_model(spec)
        self.evaluator = build_evaluator(config, self.model, self.tokenizer, task)
        self.prepared = self.evaluator.prepare(splits.optimization)
        self.progress = progress

    def __call__(self, candidate: Candidate) -> Observation:
        if candidate.probe != "task_accuracy":
            raise UsageError(
                f"this evaluator scores the probe 'task_accuracy', but the candidate asks for "
                f"{candidate.probe!r}"
            )
        return self._task_accuracy(candidate)

    def _task_accuracy(self, candidate: Candidate) -> Observation:
        label = f"round {len(candidate.drop)} drop {candidate.drop}" if self.progress else False
        res = self.evaluator.evaluate(self.prepared, candidate.drop, progress=label)
        metrics = {**res.metrics(), "tflops": self.tflops(candidate.drop)}
        extras: dict[str, Any] = {}
        if not candidate.drop:
            # The baseline's per-example predictions are a result file; they travel with the
            # trial because the coordinator may be on another machine.
            extras["predictions"] = prediction_rows(res)
        return Observation(candidate, res.accuracy, metrics, extras)

    def tflops(self, drop: DropSet) -> float:
        """Analytic TFLOPs of scoring the optimization split without the layers in `drop`.

        In ``generate`` mode every reply is counted at ``max_new_tokens`` (an upper bound:
        replies that stop early cost less).
        """
        from tale_opt.cost.workload import evaluation_flops

        flops = evaluation_flops(
            self.model.config, drop, self.prepared, max_new_tokens=self.evaluator.max_new_tokens
        )
        return flops.tflops


def prediction_rows(res: Any) -> list[dict[str, Any]]:
    """One JSON-friendly row per example of an `EvalResult`."""
    return [
        {
            "id": p.example_id,
            "prediction": p.prediction,
            "gold": p.gold,
            "correct": p.correct,
            "output": p.text,
        }
        for p in res.predictions
    ]
