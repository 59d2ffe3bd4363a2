"""Composition root of one search: config in, result files out.

Receives a plain dict (the CLI resolves Hydra's config first; nothing here imports hydra),
builds the task, splits and searcher, opens (or resumes) the search's Optuna study, and runs
the coordinator: candidates are evaluated in this process (`workers=0`) or by spawned local
workers (`workers=N`) and by any worker that joins from elsewhere. Then Baseline, Best, BSBA
and the AE-HM pick are evaluated once on the held-out split. Everything that can be checked
without a model is checked before any weights are loaded.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import searchers
from tale_opt import worker_main
from tale_opt.coordination.coordinator import run_coordinator
from tale_opt.coordination.local_workers import LocalWorkers
from tale_opt.coordination.storage import StorageConfig, open_storage
from tale_opt.coordination.study import default_study_name, open_study
from tale_opt.errors import UsageError, did_you_mean
from tale_opt.outputs import RunWriter, write_text_atomic
from tale_opt.report import format_summary_table
from tale_opt.reported import (
    accepted_costs,
    build_summary,
    evaluate_heldout,
    pick_configurations,
)
from tale_opt.reporting.plots import write_search_plots
from tale_opt.search_setup import (
    CandidateEvaluator,
    build_evaluator,
    check_eval_options,
    early_stop_option,
    load_task_and_splits,
    model_spec,
    search_fingerprint,
    study_config,
)
from tale_opt.search_tracking import SearchTracking
from tale_opt.significance import (
    chance_level,
    noise_warnings,
    round_sentence,
    round_tests,
    task_fewshot,
)
from tale_opt.stats import accuracy_interval, format_accuracy
from tale_opt.types import TASK_ACCURACY, Observation, SearchResult

log = logging.getLogger("tale_opt")

# Used when the config has no storage node (a plain dict from a test or a script).
DEFAULT_STORAGE = {"kind": "sqlite", "path": "outputs/tale_opt.db"}


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


@dataclass
class SearchPlan:
    """Everything a search needs before any weights are loaded."""

    cfg: Mapping[str, Any]
    config: dict[str, Any]  # study_config(cfg): what workers rebuild the evaluator from
    task: Any
    splits: Any
    spec: Any
    searcher: Any
    num_layers: int
    storage: StorageConfig
    study: Any
    workers: int
    threads: int | None
    lam: float
    latency: Any  # LatencySettings, or None to skip measuring latency


def plan_search(cfg: Mapping[str, Any]) -> SearchPlan:
    """Validate `cfg`, draw the splits, and open (or resume) the search's study.

    Raises:
        UsageError: Any bad value, unreachable storage, or a study of another search.
    """
    from tale_opt.model.loading import describe_model

    seed = _require_int(cfg, "seed", minimum=0)
    _require_int(cfg, "n_opt", minimum=1, allow_none=True)
    _require_int(cfg, "n_eval", minimum=1, allow_none=True)
    workers = _require_int({"workers": cfg.get("workers", 0)}, "workers", minimum=0)
    threads = _require_int(
        {"worker_threads": cfg.get("worker_threads")}, "worker_threads", minimum=1, allow_none=True
    )
    lam = cfg.get("ae_hm_lambda", 1.0)
    if isinstance(lam, bool) or not isinstance(lam, int | float) or lam <= 0:
        raise UsageError(f"`ae_hm_lambda` must be a number > 0, but got {lam!r}")
    storage = StorageConfig.from_mapping(cfg.get("storage") or DEFAULT_STORAGE)
    latency = _latency_settings(cfg.get("latency"))
    config = study_config(cfg)
    check_eval_options(config)
    task, splits = load_task_and_splits(config)
    spec = model_spec(config)
    # Fail on searcher options before touching the model; the layer count comes next.
    build_searcher(cfg["searcher"], num_layers=10_000)
    identity = describe_model(spec)  # config only: a coordinator with workers loads no weights
    num_layers = identity["num_layers"]
    searcher = build_searcher(cfg["searcher"], num_layers)
    fingerprint = search_fingerprint(config, identity, task, splits)
    name = cfg.get("study") or default_study_name(
        [task.name, config["model_name"], searcher.name, f"s{seed}"], fingerprint
    )
    study = open_study(open_storage(storage), str(name), fingerprint, config)
    log.info(
        "%s: %d decoder layers; %s: %d optimization / %d held-out examples; study %s in %s",
        config["model_name"], num_layers, task.name, len(splits.optimization),
        len(splits.evaluation), name, storage.describe(),
    )  # fmt: skip
    log.info(
        "more workers can join from any machine that reaches the storage: "
        "python -m tale_opt worker %s study=%s",
        " ".join(storage.join_args()), name,
    )  # fmt: skip
    return SearchPlan(
        cfg, config, task, splits, spec, searcher, num_layers, storage, study, workers, threads,
        lam, latency,
    )  # fmt: skip


def _latency_settings(node: Mapping[str, Any] | None) -> Any:
    from tale_opt.cost.latency import LatencySettings

    if node is None:
        return None
    try:
        return LatencySettings.from_mapping(node)
    except (TypeError, ValueError) as err:
        raise UsageError(f"latency: {err} (latency=null skips measuring)") from err


def run(
    cfg: Mapping[str, Any], out_dir: Path, launch_dir: str | Path | None = None
) -> dict[str, Any]:
    """Run (or resume) one search described by `cfg` and write its results into `out_dir`.

    `launch_dir` is where the command was started (relative tracking paths resolve there).
    """
    started = time.perf_counter()
    plan = plan_search(cfg)
    tracking = SearchTracking.start(cfg, launch_dir=launch_dir, run_name=plan.study.study_name)
    try:
        summary = _run(plan, tracking, Path(out_dir), started)
    except KeyboardInterrupt:
        tracking.abort("KILLED")
        raise
    except BaseException:
        tracking.abort("FAILED")
        raise
    return summary


def _run(plan: SearchPlan, tracking: SearchTracking, out_dir: Path, started: float) -> dict:
    evaluate = None
    if plan.workers == 0:
        evaluate = CandidateEvaluator(
            plan.config, task=plan.task, splits=plan.splits, progress=True
        )
    with RunWriter(out_dir) as writer:
        loaded = time.perf_counter()
        result = _search(plan, evaluate, writer, tracking)
        searched = time.perf_counter()
        evaluator = evaluate.evaluator if evaluate is not None else _load_evaluator(plan)
        prepared = evaluator.prepare(plan.splits.evaluation)
        costs = accepted_costs(evaluator, result.trajectory, plan.latency, prepared)
        tracking.log_costs(result.trajectory, costs)
        picks = pick_configurations(result, plan.num_layers, plan.lam, costs)
        measured = time.perf_counter()
        heldout = evaluate_heldout(evaluator, prepared, picks, writer)
        finished = time.perf_counter()

        summary = build_summary(plan, result, picks, heldout, costs)
        summary["study"] = {
            "name": plan.study.study_name,
            "storage": plan.storage.describe(),
            "workers": plan.workers,
        }
        if tracking.parent_run_id is not None:
            summary["tracking"] = {"uri": tracking.uri, "parent_run_id": tracking.parent_run_id}
        summary["timings"] = {
            "load_s": round(loaded - started, 2),
            "search_s": round(searched - loaded, 2),
            "latency_s": round(measured - searched, 2),
            "heldout_s": round(finished - measured, 2),
            "total_s": round(finished - started, 2),
            "candidates": len(result.observations),
            # stopped early (eval.early_stop): they could not beat their round's leader
            "pruned_candidates": sum(not o.complete for o in result.observations),
            "per_candidate_s": round((searched - loaded) / max(1, len(result.observations)), 3),
        }
        writer.write_summary(summary)
    table = format_summary_table(summary)
    write_text_atomic(out_dir / "summary.md", table + "\n")
    write_search_plots(out_dir)
    tracking.finish(summary, out_dir)
    print(table)
    return summary


def _search(
    plan: SearchPlan, evaluate: Any, writer: RunWriter, tracking: SearchTracking
) -> SearchResult:
    """Coordinate the search: in this process (`evaluate`) or with `plan.workers` workers."""
    local = None
    if plan.workers > 0:
        local = LocalWorkers(
            plan.workers,
            worker_main.spawned,
            {
                "storage": plan.storage.as_dict(),
                "study": plan.study.study_name,
                "debug": plan.cfg.get("debug"),
            },
            device=plan.spec.device,
            threads=plan.threads,
        )
        local.start()
    searcher = plan.searcher
    chance = chance_level(plan.task, plan.splits.optimization)
    reported = 1  # accepted configurations whose test is logged (the baseline needs none)

    def report_accepted(trajectory: Sequence[Observation]) -> None:
        # Each newly accepted round against the baseline, on the examples both were scored on.
        nonlocal reported
        for test in round_tests(trajectory)[reported - 1 :]:
            log.info("optimization split, %s", round_sentence(test))
        reported = max(reported, len(trajectory))

    def record(obs: Observation, trial: Any) -> None:
        log.info(
            "round %d drop %s: score %s%.4f (trial %d)",
            len(obs.drop), obs.drop, "" if obs.complete else "<= ", obs.score, trial.number,
        )  # fmt: skip
        if not obs.complete:
            log.info(
                "  stopped early after %d of %d examples: cannot beat drop {%s}",
                obs.metrics.get("n_seen", 0), obs.metrics.get("n_examples", 0),
                obs.extras.get("bounded_by", {}).get("drop", "?"),
            )  # fmt: skip
        writer.record_candidate(obs)
        tracking.log_configuration(obs)
        if not obs.drop and obs.candidate.probe == TASK_ACCURACY and obs.complete:
            writer.write_predictions("optimization_baseline", obs.extras.get("predictions", []))
            _log_baseline(obs.metrics, chance, plan.cfg["eval"].get("scoring"), plan.task)
        state = getattr(searcher, "state", None)
        if state is not None:
            writer.write_accepted(state.trajectory, getattr(searcher, "threshold", None))
            if state.trajectory and state.trajectory[0].candidate.probe == TASK_ACCURACY:
                report_accepted(tuple(state.trajectory))

    try:
        result = run_coordinator(
            plan.study,
            searcher,
            evaluate=evaluate,
            on_observation=record,
            poll_interval=plan.storage.poll_interval,
            lost_after=2 * plan.storage.grace_period,
            max_retry=plan.storage.max_retry,
            check_workers=local.check if local is not None else lambda: None,
            early_stop=early_stop_option(plan.cfg),
        )
    except BaseException:
        if local is not None:
            local.stop(timeout=0)  # their trials go stale and are retried on resume
        raise
    if local is not None:
        local.stop()
    writer.write_accepted(result.trajectory, result.threshold)
    return result


def _log_baseline(
    metrics: Mapping[str, Any], chance: float | None, scoring: Any, task: Any
) -> None:
    """The baseline with its interval and chance level, as soon as it is known: a search on a
    model that only guesses is better stopped now than read later."""
    level = "-" if chance is None else f"{100 * chance:.1f}%"
    log.info(
        "baseline: %s on the optimization split (95%% interval), chance level %s",
        format_accuracy(metrics.get("accuracy"), accuracy_interval(metrics), "%"), level,
    )  # fmt: skip
    fewshot = task_fewshot(task)
    for warning in noise_warnings([("optimization", metrics, chance)], scoring, fewshot):
        log.warning("%s", warning)


def _load_evaluator(plan: SearchPlan) -> Any:
    """The workers have left: load the model here, once, for latency and the held-out split."""
    from tale_opt.model.loading import load_model

    model, tokenizer = load_model(plan.spec)
    return build_evaluator(plan.config, model, tokenizer, plan.task)
