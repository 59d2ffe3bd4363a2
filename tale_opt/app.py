"""Composition root of one search: config in, result files out.

Receives a plain dict (the CLI resolves Hydra's config first; nothing here imports hydra),
builds the task, splits, model, evaluator and searcher, runs the search on the optimization
split, then evaluates Baseline, Best, BSBA and the AE-HM pick once on the held-out split.
Everything that can be checked without a model is checked before the model is loaded.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import searchers
from searchers.selection import layer_count_speedup, pick_ae_hm
from tale_opt.coordination.inprocess import run_search
from tale_opt.errors import UsageError, did_you_mean
from tale_opt.outputs import RunWriter, observation_record
from tale_opt.report import format_summary_table
from tale_opt.types import Candidate, Observation, SearchResult

log = logging.getLogger("tale_opt")

PICKS = ("baseline", "best", "bsba", "ae_hm")


def _require_int(cfg: Mapping[str, Any], key: str, *, minimum: int, allow_none: bool = False):
    value = cfg.get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise UsageError(f"`{key}` must be {kind}, but got {value!r}; e.g. {key}={minimum}")
    return value


def build_searcher(cfg: Mapping[str, Any], num_layers: int) -> searchers.Searcher:
    """Bind the searcher config node to its class's constructor (keys are its arguments)."""
    options = dict(cfg)
    name = options.pop("name", None)
    cls = searchers.REGISTRY.get(name)
    if cls is None:
        hint = did_you_mean(str(name), searchers.REGISTRY)
        raise UsageError(f"unknown searcher {name!r}.{hint}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "num_layers"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UsageError(
            f"searcher '{name}' has no option(s) {unknown}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )
    try:
        return cls(num_layers, **options)
    except (TypeError, ValueError) as err:
        raise UsageError(f"searcher '{name}': {err}") from err


def run(cfg: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Run one search described by `cfg` and write its results into `out_dir`."""
    # Imported here so `--help` and config errors answer without loading torch.
    from tale_opt.evaluation.evaluator import Evaluator
    from tale_opt.model.loading import ModelSpec, load_model
    from tale_opt.model.surgery import num_decoder_layers
    from tale_opt.tasks.registry import build_task, load_splits

    started = time.perf_counter()
    seed = _require_int(cfg, "seed", minimum=0)
    n_opt = _require_int(cfg, "n_opt", minimum=1, allow_none=True)
    n_eval = _require_int(cfg, "n_eval", minimum=1, allow_none=True)
    lam = cfg.get("ae_hm_lambda", 1.0)
    if isinstance(lam, bool) or not isinstance(lam, int | float) or lam <= 0:
        raise UsageError(f"`ae_hm_lambda` must be a number > 0, but got {lam!r}")
    eval_cfg = dict(cfg["eval"])
    model_cfg = {k: v for k, v in dict(cfg["model"]).items() if k != "name"}

    task = build_task(dict(cfg["task"]))
    splits = load_splits(dict(cfg["task"]), seed=seed, n_opt=n_opt, n_eval=n_eval)
    spec = ModelSpec(**model_cfg)
    # Fail on searcher options before the (slow) model load; the layer count comes later.
    build_searcher(cfg["searcher"], num_layers=10_000)

    log.info("loading model %s", spec.path)
    model, tokenizer = load_model(spec)
    num_layers = num_decoder_layers(model)
    searcher = build_searcher(cfg["searcher"], num_layers)
    evaluator = Evaluator(
        model,
        tokenizer,
        task,
        scoring=eval_cfg.get("scoring", "letters"),
        batch_size=eval_cfg.get("batch_size", 16),
        max_new_tokens=eval_cfg.get("max_new_tokens", 1),
    )
    loaded = time.perf_counter()
    log.info(
        "%s: %d decoder layers; %s: %d optimization / %d held-out examples",
        cfg["model"].get("name", spec.path), num_layers, task.name,
        len(splits.optimization), len(splits.evaluation),
    )  # fmt: skip

    optimization = evaluator.prepare(splits.optimization)
    with RunWriter(out_dir) as writer:
        opt_results: dict[str, Any] = {}

        def evaluate(candidate: Candidate) -> Observation:
            label = f"round {len(candidate.drop)} drop {candidate.drop}"
            res = evaluator.evaluate(optimization, candidate.drop, progress=label)
            if not candidate.drop:
                opt_results["baseline"] = res
            return Observation(candidate, res.accuracy, res.metrics())

        def record(obs: Observation) -> None:
            writer.record_candidate(obs, round_no=len(obs.drop))
            if not obs.drop:
                writer.write_predictions(
                    "optimization_baseline", _prediction_rows(opt_results["baseline"])
                )
            state = getattr(searcher, "state", None)
            if state is not None:
                writer.write_accepted(state.trajectory, getattr(searcher, "threshold", None))

        result = run_search(searcher, evaluate, record)
        writer.write_accepted(result.trajectory, result.threshold)
        searched = time.perf_counter()

        picks = _picks(result, num_layers, lam)
        # The held-out split is prepared and touched only now, once the search is over.
        heldout_prepared = evaluator.prepare(splits.evaluation)
        heldout: dict[str, Any] = {}
        by_drop: dict[str, Any] = {}
        for name, obs in picks.items():
            if obs.drop.key not in by_drop:
                res = evaluator.evaluate(heldout_prepared, obs.drop, progress=f"held-out {name}")
                by_drop[obs.drop.key] = res
                writer.write_predictions(f"heldout_{name}", _prediction_rows(res))
            heldout[name] = by_drop[obs.drop.key].metrics()
        finished = time.perf_counter()

        summary = _summary(cfg, task, splits, num_layers, result, picks, heldout, lam)
        summary["timings"] = {
            "load_s": round(loaded - started, 2),
            "search_s": round(searched - loaded, 2),
            "heldout_s": round(finished - searched, 2),
            "total_s": round(finished - started, 2),
            "candidates": len(result.observations),
            "per_candidate_s": round((searched - loaded) / max(1, len(result.observations)), 3),
        }
        writer.write_summary(summary)
    table = format_summary_table(summary)
    (Path(out_dir) / "summary.md").write_text(table + "\n")
    print(table)
    return summary


def _picks(result: SearchResult, num_layers: int, lam: float) -> dict[str, Observation]:
    speedup = layer_count_speedup(num_layers)
    aehm = pick_ae_hm(result.trajectory, result.baseline.score, lam, speedup)
    return {"baseline": result.baseline, "best": result.best, "bsba": result.bsba, "ae_hm": aehm}


def _prediction_rows(res: Any) -> list[dict[str, Any]]:
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


def _summary(cfg, task, splits, num_layers, result, picks, heldout, lam) -> dict[str, Any]:
    speedup = layer_count_speedup(num_layers)
    configs = {}
    for name, obs in picks.items():
        configs[name] = {
            **observation_record(obs),
            "n_layers": num_layers - len(obs.drop),
            "speedup_estimate": round(speedup(obs), 4),
            "heldout": heldout[name],
        }
    return {
        "model": cfg["model"].get("name", cfg["model"].get("path")),
        "model_path": cfg["model"].get("path"),
        "task": task.name,
        "searcher": cfg["searcher"].get("name"),
        "scoring": cfg["eval"].get("scoring"),
        "seed": cfg["seed"],
        "num_layers": num_layers,
        "n_opt": len(splits.optimization),
        "n_eval": len(splits.evaluation),
        "splits_fingerprint": splits.fingerprint,
        "prompt_version": task.prompt_version,
        "epsilon": cfg["searcher"].get("epsilon"),
        "baseline_accuracy": result.baseline.score,
        "threshold": result.threshold,
        "stop_reason": result.stop_reason,
        "ae_hm_lambda": lam,
        "trajectory": [observation_record(obs) for obs in result.trajectory],
        **configs,
    }
