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

from searchers.base import Searcher
from tale_opt import validate
from tale_opt.errors import UsageError, did_you_mean
from tale_opt.outcomes import Race, RaceState, outcome_record
from tale_opt.pipeline.significance import CORRECT, correct_bits
from tale_opt.types import (
    PROBES,
    TASK_ACCURACY,
    TEXT_PROBES,
    Candidate,
    DropSet,
    Observation,
    Status,
)

log = logging.getLogger("tale_opt")

MODEL_KEYS = ("path", "revision", "dtype", "device", "trust_remote_code", "attn_implementation")
# `shared_prefix` is here because it changes scores to rounding (like `batch_size`).
EVAL_KEYS = ("scoring", "batch_size", "max_new_tokens", "shared_prefix", "chat_template")
# Memory for prefix reuse (GiB). It changes no score, so it travels beside `eval` (which is in
# the fingerprint) and a resumed search may use another value.
DEFAULT_PREFIX_CACHE_GB = 4.0


def study_config(cfg: Mapping[str, Any], searcher: Any = None) -> dict[str, Any]:
    """The part of a resolved search config that evaluating a candidate depends on (JSON).

    `searcher` is the search's built searcher, whose probe and probe text (class defaults
    included) go into the config; without it they are read from the searcher's config node.
    """
    from tale_opt.coordination.racing import PrunerSettings

    model = dict(cfg["model"])
    # A racing pruner changes picks: its settings go to every worker and into the fingerprint.
    # `exact` and `none` change none, so they leave no entry (studies keep their fingerprint).
    racing = PrunerSettings.from_mapping(cfg.get("pruner")).study_entry()
    return {
        "model": {k: model[k] for k in MODEL_KEYS if k in model},
        "model_name": model.get("name", model.get("path")),
        "task": dict(cfg["task"]),
        "eval": _eval_config(cfg["eval"]),
        "prefix_cache_gb": dict(cfg["eval"]).get("prefix_cache_gb", DEFAULT_PREFIX_CACHE_GB),
        "seed": cfg["seed"],
        "n_opt": cfg.get("n_opt"),
        "n_eval": cfg.get("n_eval"),
        "searcher": cfg["searcher"].get("name"),
        **(probe_config(searcher) if searcher is not None else _node_probe(cfg["searcher"])),
        **({"pruner": racing} if racing is not None else {}),
    }


def _eval_config(node: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring options of the fingerprint. `chat_template` appears only when turned off,
    so studies made before the option existed keep their fingerprint."""
    options = {k: v for k, v in dict(node).items() if k in EVAL_KEYS}
    if options.get("chat_template", True) is True:
        options.pop("chat_template", None)
    return options


def probe_config(searcher: Searcher) -> dict[str, Any]:
    """``probe``: the probe that ranks layers for this searcher; and, for probes that read text
    (perplexity, hidden states), ``text``: the normalized probe-text spec every worker reads.

    Raises:
        UsageError: An invalid ``text`` spec.
    """
    return _probe_entries(searcher.probe, searcher.text)


def _node_probe(node: Mapping[str, Any]) -> dict[str, Any]:
    """`probe_config` from a searcher's config node alone: its ``probe`` key, else the class's
    declared probe; its ``text`` key (a class default set in the constructor is not seen)."""
    import searchers

    cls = searchers.REGISTRY.get(node.get("name"))
    probe = node.get("probe", getattr(cls, "probe", TASK_ACCURACY))
    return _probe_entries(probe, node.get("text"))


def _probe_entries(probe: str, text: Any) -> dict[str, Any]:
    from searchers.options import check_text

    if probe not in TEXT_PROBES:
        return {"probe": probe}
    try:
        return {"probe": probe, "text": check_text(text)}
    except ValueError as err:
        raise UsageError(f"searcher option {err}") from err


def search_fingerprint(
    config: Mapping[str, Any], model_identity: Mapping[str, Any], task: Any, splits: Any
) -> dict[str, Any]:
    """Everything that determines a candidate's score; a study is valid for one fingerprint.

    Stopping options (epsilon, max_drop) are not in it: they do not change any score, so runs
    that differ only there share a study and its evaluations. Nor are the ``exact`` and
    ``none`` pruners; a racing pruner's settings are (they change which candidates finish).
    """
    return {
        "model": dict(model_identity),
        "task": task.name,
        "prompt_version": task.prompt_version,
        "splits": splits.fingerprint,
        "eval": dict(config["eval"]),
        "searcher": config["searcher"],
        "probe": config["probe"],
        # What text-reading probes read (absent for task accuracy: old studies keep their key).
        **({"text": config["text"]} if "text" in config else {}),
        "seed": config["seed"],
        **({"pruner": config["pruner"]} if "pruner" in config else {}),
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
        validate.integer(eval_cfg.get(key, 1), f"eval.{key}", minimum=1)
    for key in ("shared_prefix", "chat_template"):
        validate.boolean(eval_cfg.get(key, True), f"eval.{key}")
    validate.number(
        config.get("prefix_cache_gb", DEFAULT_PREFIX_CACHE_GB), "eval.prefix_cache_gb", minimum=0
    )


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
        shared_prefix=eval_cfg.get("shared_prefix", True),
        chat_template=eval_cfg.get("chat_template", True),
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
        loaded: ``(model, tokenizer)`` already loaded by the caller (the tasks of a multi-task
            search share one model); `config`'s model is loaded otherwise.

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
        loaded: tuple[Any, Any] | None = None,
    ) -> None:
        from tale_opt.evaluation.prefix_reuse import PrefixReuse

        if task is None or splits is None:
            task, splits = load_task_and_splits(config)
        spec = model_spec(config, device, model_path)
        if expected is not None:
            check_splits(task, splits, expected.get("splits"))
            check_model_files(spec, expected, model_path)
        self.task, self.splits = task, splits
        self.model, self.tokenizer = loaded if loaded is not None else load_spec(spec)
        self.evaluator = build_evaluator(config, self.model, self.tokenizer, task)
        self.prepared = self.evaluator.prepare(splits.optimization, split="optimization")
        # Across the trials of a round, candidates start from the round base's hidden states.
        self.reuse = PrefixReuse(
            self.evaluator,
            self.prepared,
            config.get("prefix_cache_gb", DEFAULT_PREFIX_CACHE_GB),
        )
        self.progress = progress
        self.probe_text = config.get("text")  # what text probes read (see `probe_config`)

    # Takes `race` (`Evaluator.evaluate`'s per-batch hook: learning curve, exact early
    # termination, racing pruners): a candidate stopped early comes back PRUNED with its upper
    # bound as the score.
    supports_race = True
    # Takes `base`: the drop set the candidate's round shares (from the coordinator), so the
    # round's first candidate in this worker already starts from cached hidden states.
    takes_base = True

    def __call__(
        self,
        candidate: Candidate,
        *,
        race: Race | None = None,
        base: DropSet | None = None,
    ) -> Observation:
        if candidate.probe == TASK_ACCURACY:
            return self._task_accuracy(candidate, race, base)
        if candidate.probe in TEXT_PROBES:
            return self._text_probe(candidate)
        hint = did_you_mean(candidate.probe, PROBES)
        raise UsageError(f"unknown probe {candidate.probe!r}.{hint}")

    def _text_probe(self, candidate: Candidate) -> Observation:
        """Perplexity / Block Influence / angular distance on the study's probe text, which is
        loaded and tokenized on first use (once per worker), not for task-accuracy searches."""
        runner = getattr(self, "_probe_runner", None)
        if runner is None:
            from tale_opt.evaluation.probes import ProbeRunner

            text = self.probe_text
            if text is None:
                raise UsageError(
                    f"probe {candidate.probe!r} needs probe text, but the study config has none "
                    "(a study made before text probes existed?); start a new study"
                )
            log.info("preparing %s probe text: %s", candidate.probe, text)
            runner = self._probe_runner = ProbeRunner(
                self.model, self.tokenizer, text, task=self.task,
                examples=self.splits.optimization, batch_size=self.evaluator.batch_size,
                chat_template=self.evaluator.chat_template,
            )  # fmt: skip
        return runner(candidate)

    def _task_accuracy(
        self,
        candidate: Candidate,
        race: Race | None = None,
        base: DropSet | None = None,
    ) -> Observation:
        label = f"round {len(candidate.drop)} drop {candidate.drop}" if self.progress else False
        last: list[RaceState] = []

        def watched(state: RaceState) -> bool:
            last[:] = [state]  # its `correct` is the evaluation's own, final once it ends
            return race is None or race(state)

        res = self.reuse.evaluate(candidate.drop, base=base, progress=label, race=watched)
        metrics = {**res.metrics(), "tflops": self.tflops(candidate.drop)}
        extras: dict[str, Any] = {}
        # Per-example outcomes, for pairing: accepted rounds against the baseline, candidates
        # against their round's leader (racing), and what a stopped candidate had scored.
        if res.complete:
            extras[CORRECT] = correct_bits(res)
        elif last:
            extras[CORRECT] = outcome_record(res.n_examples, last[0].correct)
        if not candidate.drop:
            # The baseline's per-example predictions are a result file; they travel with the
            # trial because the coordinator may be on another machine.
            extras["predictions"] = prediction_rows(res)
        status = Status.COMPLETE if res.complete else Status.PRUNED  # pruned: an upper bound
        return Observation(candidate, res.accuracy, metrics, extras, status)

    def release_caches(self) -> None:
        """Free what only the search needs (the round base's cached hidden states, the probe
        text) once it is over: the same model then measures latency and scores the held-out
        split, and on a GPU those states can take more memory than the weights."""
        held = self.reuse.release()
        self._probe_runner = None
        if held:
            log.info("search done: released %.3f GiB of cached hidden states", held / 2**30)

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


def load_spec(spec: Any) -> tuple[Any, Any]:
    from tale_opt.model.loading import load_model

    log.info("loading model %s", spec.path)
    return load_model(spec)


def check_splits(task: Any, splits: Any, expected: Any) -> None:
    """Refuse splits drawn here that are not the study's (another machine's data).

    Raises:
        UsageError: The fingerprints differ.
    """
    if splits.fingerprint != expected:
        raise UsageError(
            f"the {task.name} splits drawn here (fingerprint {splits.fingerprint}) are "
            f"not the study's ({expected}); this machine's data differs "
            "from the coordinator's: install the same data packages/files"
        )


def check_model_files(spec: Any, expected: Mapping[str, Any], model_path: str | None) -> None:
    """Refuse model files here that are not the study's; `model_path` may move them.

    Raises:
        UsageError: Another checkpoint.
    """
    from tale_opt.model.loading import describe_model

    identity, wanted = describe_model(spec), dict(expected.get("model", {}))
    if model_path is not None:
        identity["path"] = wanted.get("path")  # moved, but the same files
    if identity != wanted:
        raise UsageError(
            f"the model files of {spec.path!r} here ({identity}) are not the study's "
            f"({wanted}); use the same checkpoint on every machine (model_path=DIR "
            "if it lives at another path here)"
        )


def prediction_rows(res: Any) -> list[dict[str, Any]]:
    """One JSON-friendly row per example of an `EvalResult` (see `Prediction.record`)."""
    return [p.record(res.scoring) for p in res.predictions]
